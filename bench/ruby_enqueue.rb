# frozen_string_literal: true

# Active Job `perform_later` µs/job, flyjobs next to Sidekiq 6.4 in the same run, interleaved:
# each round measures flyjobs on SQLite (the embedded default's store: a file in a temp dir),
# Sidekiq (Debian ruby-sidekiq, on a redis-server this script starts on loopback), flyjobs on
# PostgreSQL (FLYJOBS_TEST_DATABASE_URL), Sidekiq again; each flyjobs figure is divided by the
# Sidekiq figure measured next to it. Prints each round, then the min and median of the ratios
# (lower is better; the goals are ≤ 1.2 on SQLite and ≤ 1.5 on PostgreSQL).
# Enqueue only: no scaler, no workers. Each measurement is 100 warm-up enqueues, then N timed
# ones, one at a time from one thread, as an app's request would do them. Also prints
# `FlyJobs::Client#enqueue` (no Active Job) per round, to tell the adapter's share from the core's.
#
#   cargo build --release -p flyjobs-ruby
#   scripts/with-postgres.sh ruby bench/ruby_enqueue.rb [--rounds 5] [--n 1000]
#
# Nothing in the checkout is edited: the gem (ruby/lib) is copied to a temp dir with the
# extension (FLYJOBS_BENCH_SO, default target/release/libflyjobs_ruby.so) as flyjobs_ruby.so.
require "fileutils"
require "optparse"
require "socket"
require "tmpdir"

ROOT = File.expand_path("..", __dir__)
opts = { rounds: 5, n: 1000 }
OptionParser.new do |o|
  o.on("--rounds N", Integer) { |v| opts[:rounds] = v }
  o.on("--n N", Integer) { |v| opts[:n] = v }
end.parse!(ARGV)
N = opts[:n]
WARMUP = 100
PG_URL = ENV.fetch("FLYJOBS_TEST_DATABASE_URL") { abort "FLYJOBS_TEST_DATABASE_URL: run me through scripts/with-postgres.sh" }
SO = File.expand_path(ENV.fetch("FLYJOBS_BENCH_SO", File.join(ROOT, "target/release/libflyjobs_ruby.so")), ROOT)
abort "#{SO} is missing: cargo build --release -p flyjobs-ruby (or set FLYJOBS_BENCH_SO)" unless File.file?(SO)

tmp = Dir.mktmpdir("flyjobs-bench")
lib = File.join(tmp, "lib")
FileUtils.cp_r(File.join(ROOT, "ruby", "lib"), lib)
FileUtils.cp(SO, File.join(lib, "flyjobs_ruby.so"))
$LOAD_PATH.unshift(lib)
require "active_job"
require "active_job/queue_adapters/fly_machine_adapter"
require "sidekiq"

ActiveJob::Base.logger = Logger.new(nil)
Sidekiq.logger.level = Logger::WARN
Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)

class BenchJob < ActiveJob::Base
  queue_as :bench
  def perform(user_id, note); end
end

# µs per call of `block` (default: BenchJob.perform_later through `adapter`).
def measure(adapter = nil, &block)
  BenchJob.queue_adapter = adapter if adapter
  block ||= ->(i, note) { BenchJob.perform_later(i, note) }
  WARMUP.times { |i| block.call(i, "warm-up") }
  t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  N.times { |i| block.call(i, "a short note") }
  (Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0) * 1e6 / N
end

# The same job through FlyJobs::Client#enqueue directly: the binding + core + store.
def measure_raw(client)
  payload = BenchJob.new(1, "a short note").serialize
  measure { |_i, _note| client.enqueue(queue: "bench", payload: payload, name: "BenchJob") }
end

def min_median(values)
  s = values.sort
  [s.first, s.size.odd? ? s[s.size / 2] : (s[s.size / 2 - 1] + s[s.size / 2]) / 2]
end

port = TCPServer.open("127.0.0.1", 0) { |s| s.addr[1] }
redis = Process.spawn("redis-server", "--port", port.to_s, "--bind", "127.0.0.1", "--save", "",
                      "--appendonly", "no", "--dir", tmp, out: File::NULL)
sqlite = pg = nil
begin
  Sidekiq.configure_client { |c| c.redis = { url: "redis://127.0.0.1:#{port}/0" } }
  50.times do
    break if (Sidekiq.redis(&:ping) rescue nil) == "PONG"

    sleep 0.1
  end
  sidekiq = ActiveJob::QueueAdapters::SidekiqAdapter.new
  sqlite = FlyJobs::Client.open(database_url: "sqlite://#{tmp}/bench.sqlite3?mode=rwc")
  pg = FlyJobs::Client.open(database_url: PG_URL)
  on_sqlite = ActiveJob::QueueAdapters::FlyMachineAdapter.new(client: sqlite)
  on_pg = ActiveJob::QueueAdapters::FlyMachineAdapter.new(client: pg)

  ratios = { sqlite: [], pg: [] }
  puts "round | flyjobs SQLite µs | Sidekiq µs | flyjobs PostgreSQL µs | Sidekiq µs | ratio SQLite / PG | Client#enqueue µs SQLite / PG"
  opts[:rounds].times do |r|
    lite = measure(on_sqlite)
    sk1 = measure(sidekiq)
    post = measure(on_pg)
    sk2 = measure(sidekiq)
    raw = [measure_raw(sqlite), measure_raw(pg)]
    ratios[:sqlite] << lite / sk1
    ratios[:pg] << post / sk2
    printf("%d | %.1f | %.1f | %.1f | %.1f | %.2f / %.2f | %.1f / %.1f\n",
           r + 1, lite, sk1, post, sk2, lite / sk1, post / sk2, *raw)
    $stdout.flush
  end
  puts
  puts "| what | min ratio | median ratio |"
  puts "|---|---:|---:|"
  { sqlite: "SQLite", pg: "PostgreSQL" }.each do |key, name|
    printf("| perform_later µs/job, flyjobs on %s ÷ Sidekiq (lower is better) | %.2f | %.2f |\n",
           name, *min_median(ratios[key]))
  end
ensure
  sqlite&.close
  pg&.close
  Process.kill("TERM", redis)
  Process.wait(redis)
  FileUtils.rm_rf(tmp)
end
