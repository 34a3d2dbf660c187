# frozen_string_literal: true

# µs per Active Job `perform_later` over 1,000 enqueues, in one run, for:
#   - flyjobs on SQLite (the embedded default's store, a file in a temp dir)
#   - flyjobs on PostgreSQL (FLYJOBS_TEST_DATABASE_URL, e.g. from scripts/with-postgres.sh)
#   - Sidekiq 6.4 (Debian ruby-sidekiq) on Redis (a redis-server this script starts on loopback)
# Enqueue only: no scaler, no workers. Each backend gets 100 warm-up enqueues, then 1,000 timed
# ones, one at a time from one thread, as an app's request would do them.
#
#   cargo build --workspace && cp target/debug/libflyjobs_ruby.so ruby/lib/flyjobs_ruby.so
#   scripts/with-postgres.sh ruby bench/ruby_enqueue.rb            # debug build of the extension
#   FLYJOBS_BENCH_SO=target/release/libflyjobs_ruby.so scripts/with-postgres.sh ruby bench/ruby_enqueue.rb
require "fileutils"
require "tmpdir"
require "socket"

root = File.expand_path("..", __dir__)
if (so = ENV["FLYJOBS_BENCH_SO"])
  FileUtils.cp(File.expand_path(so, root), File.join(root, "ruby", "lib", "flyjobs_ruby.so"))
end
$LOAD_PATH.unshift(File.join(root, "ruby", "lib"))
require "active_job"
require "active_job/queue_adapters/fly_machine_adapter"
require "sidekiq"

N = Integer(ENV.fetch("N", "1000"))
WARMUP = 100
ActiveJob::Base.logger = Logger.new(nil)
Sidekiq.logger.level = Logger::WARN
Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)

class BenchJob < ActiveJob::Base
  queue_as :bench
  def perform(user_id, note); end
end

def measure(label, what = "perform_later", &block)
  block ||= ->(i, note) { BenchJob.perform_later(i, note) }
  WARMUP.times { |i| block.call(i, "warm-up") }
  t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  N.times { |i| block.call(i, "a short note") }
  elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0
  us = elapsed * 1e6 / N
  printf("%-34s %8.1f µs/%s  (%d in %.3f s, %.0f/s)\n", label, us, what, N, elapsed, N / elapsed)
  [label, us]
end

# The same job through FlyJobs::Client#enqueue directly (no Active Job): the binding + core + store.
def measure_raw(label, client)
  payload = BenchJob.new(1, "a short note").serialize
  measure(label, "enqueue") { |_i, _note| client.enqueue(queue: "bench", payload: payload, name: "BenchJob") }
end

results = []
tmp = Dir.mktmpdir("flyjobs-bench")
begin
  FlyJobs::Client.open(database_url: "sqlite://#{tmp}/bench.sqlite3?mode=rwc") do |client|
    ActiveJob::Base.queue_adapter = ActiveJob::QueueAdapters::FlyMachineAdapter.new(client: client)
    results << measure("flyjobs (SQLite)")
    results << measure_raw("  FlyJobs::Client#enqueue (SQLite)", client)
  end

  if (pg = ENV["FLYJOBS_TEST_DATABASE_URL"] || ENV["FLYJOBS_BENCH_PG_URL"])
    FlyJobs::Client.open(database_url: pg) do |client|
      ActiveJob::Base.queue_adapter = ActiveJob::QueueAdapters::FlyMachineAdapter.new(client: client)
      results << measure("flyjobs (PostgreSQL)")
      results << measure_raw("  FlyJobs::Client#enqueue (PostgreSQL)", client)
    end
  else
    warn "no FLYJOBS_TEST_DATABASE_URL: skipping PostgreSQL (run under scripts/with-postgres.sh)"
  end

  port = TCPServer.open("127.0.0.1", 0) { |s| s.addr[1] }
  redis_pid = Process.spawn("redis-server", "--port", port.to_s, "--bind", "127.0.0.1", "--save", "",
                            "--appendonly", "no", "--dir", tmp, out: File::NULL)
  begin
    Sidekiq.configure_client { |c| c.redis = { url: "redis://127.0.0.1:#{port}/0" } }
    50.times do
      break if (Sidekiq.redis { |r| r.ping } rescue nil) == "PONG"

      sleep 0.1
    end
    ActiveJob::Base.queue_adapter = :sidekiq
    results << measure("Sidekiq #{Sidekiq::VERSION} (Redis)")
  ensure
    Process.kill("TERM", redis_pid)
    Process.wait(redis_pid)
  end
ensure
  FileUtils.rm_rf(tmp)
end

puts
puts "| backend | µs per call (mean of #{N}) |"
puts "|---|---:|"
results.each { |label, us| printf("| %s | %.1f |\n", label.strip, us) }
