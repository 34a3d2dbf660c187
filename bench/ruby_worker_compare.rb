# frozen_string_literal: true

# `bin/fly-machine-worker` next to `sidekiq -r app`, on the same Rails app, in the same run,
# interleaved A B / B A: no-op Active Job jobs/s with 5 threads draining a backlog loaded in bulk.
# Prints each round and the min and median of the ratio flyjobs ÷ Sidekiq (higher is better).
#
#   cargo build --release -p flyjobs-ruby      # or a debug extension via FLYJOBS_BENCH_SO
#   scripts/with-postgres.sh ruby bench/ruby_worker_compare.rb [--rounds 3] [--backlog 10000] [--threads 5]
#
# Nothing in the checkout is edited: the gem (ruby/) is copied to a temp dir with the extension
# (FLYJOBS_BENCH_SO, default target/release/libflyjobs_ruby.so) as lib/flyjobs_ruby.so, next to a
# minimal Rails app (Active Job only, production mode, logs at warn) that both workers boot:
# flyjobs on the PostgreSQL of FLYJOBS_TEST_DATABASE_URL (a fresh database per measurement),
# Sidekiq 6.4 (Debian ruby-sidekiq) on a redis-server started here on a loopback port.
# The rate is timed inside the job (first perform to last), so neither side's boot counts.
require "fileutils"
require "json"
require "optparse"
require "socket"
require "tmpdir"
require "timeout"

ROOT = File.expand_path("..", __dir__)
opts = { rounds: 3, backlog: 10_000, threads: 5 }
OptionParser.new do |o|
  o.on("--rounds N", Integer) { |v| opts[:rounds] = v }
  o.on("--backlog N", Integer) { |v| opts[:backlog] = v }
  o.on("--threads N", Integer) { |v| opts[:threads] = v }
end.parse!(ARGV)
PG_URL = ENV.fetch("FLYJOBS_TEST_DATABASE_URL") { abort "FLYJOBS_TEST_DATABASE_URL: run me through scripts/with-postgres.sh" }
SO = File.expand_path(ENV.fetch("FLYJOBS_BENCH_SO", File.join(ROOT, "target/release/libflyjobs_ruby.so")), ROOT)
abort "#{SO} is missing: cargo build --release -p flyjobs-ruby (or set FLYJOBS_BENCH_SO)" unless File.file?(SO)
PSQL = Dir["/usr/lib/postgresql/*/bin/psql"].max || "psql"

def free_port
  s = TCPServer.new("127.0.0.1", 0)
  s.addr[1]
ensure
  s&.close
end

def now = Process.clock_gettime(Process::CLOCK_MONOTONIC)

def run!(env, *cmd, chdir: nil)
  ok = system(env, *cmd, **(chdir ? { chdir: chdir } : {}))
  raise "#{cmd.join(" ")} failed (#{$?})" unless ok
end

# The app: one no-op job that counts its performs and, at the last one, writes the time from the
# first perform to the last to BENCH_RESULT.
def write_app(dir, gem_lib)
  FileUtils.mkdir_p(%W[#{dir}/config/initializers #{dir}/app/jobs #{dir}/log #{dir}/tmp])
  File.write("#{dir}/config/application.rb", <<~RUBY)
    require "rails"
    require "active_job/railtie"
    if ENV["BENCH_ADAPTER"] == "sidekiq"
      require "sidekiq"
      Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)
    else
      $LOAD_PATH.unshift(#{gem_lib.inspect})
      require "flyjobs"
    end
    module BenchApp
      class Application < Rails::Application
        config.load_defaults 6.1
        config.eager_load = true
        config.cache_classes = true
        config.secret_key_base = "bench"
        config.log_level = :warn
        config.logger = ActiveSupport::Logger.new($stderr)
        config.active_job.queue_adapter = ENV["BENCH_ADAPTER"] == "sidekiq" ? :sidekiq : :fly_machine
        config.flyjobs.scaler = false if config.respond_to?(:flyjobs)
      end
    end
  RUBY
  File.write("#{dir}/config/environment.rb", <<~RUBY)
    require_relative "application"
    Rails.application.initialize!
    ActiveJob::Base.logger.level = Logger::WARN
  RUBY
  File.write("#{dir}/app/jobs/noop_job.rb", <<~RUBY)
    class NoopJob < ActiveJob::Base
      LOCK = Mutex.new
      @count = 0
      class << self
        def tick
          n = LOCK.synchronize { @count += 1 }
          t = Process.clock_gettime(Process::CLOCK_MONOTONIC)
          cpu = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID)
          @first, @first_cpu = t, cpu if n == 1
          return unless n == Integer(ENV.fetch("BENCH_N"))

          File.write(ENV.fetch("BENCH_RESULT"), JSON.generate(n: n, seconds: t - @first, cpu: cpu - @first_cpu))
        end
      end

      def perform(_i) = self.class.tick
    end
  RUBY
end

ENQUEUE_FLYJOBS = <<~RUBY
  require "./config/environment"
  n = Integer(ENV.fetch("BENCH_N"))
  (0...n).each_slice(1000) do |s|
    FlyJobs.client.enqueue_many(s.map { |i| FlyJobs::ActiveJobSupport.new_job(NoopJob.new(i)) })
  end
RUBY

ENQUEUE_SIDEKIQ = <<~RUBY
  require "./config/environment"
  n = Integer(ENV.fetch("BENCH_N"))
  Sidekiq.redis(&:flushdb)
  wrapper = ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper
  (0...n).each_slice(1000) do |s|
    Sidekiq::Client.push_bulk("class" => wrapper, "wrapped" => "NoopJob", "queue" => "default",
                              "args" => s.map { |i| [NoopJob.new(i).serialize] })
  end
RUBY

# Starts the worker command, waits for the result file, stops the worker (TERM) and returns
# [jobs/s, the worker process's CPU µs per job (all its threads; not the database's)].
def drain(env, cmd, dir, n)
  result = File.join(dir, "tmp", "result-#{rand(1 << 30)}.json")
  env = env.merge("BENCH_RESULT" => result, "BENCH_N" => n.to_s)
  pid = Process.spawn(env, *cmd, chdir: dir, out: File::NULL, err: File.join(dir, "log", "worker.log"))
  deadline = now + 600
  sleep 0.05 until File.exist?(result) || now > deadline || Process.waitpid(pid, Process::WNOHANG)
  raise "#{cmd.first} did not drain #{n} jobs (see #{dir}/log/worker.log)" unless File.exist?(result)

  sleep 0.05 # the file is written in one call; give it a moment to be whole
  r = JSON.parse(File.read(result))
  [(r["n"] - 1) / r["seconds"], r["cpu"] * 1e6 / (r["n"] - 1)]
ensure
  if pid
    begin
      Process.kill("TERM", pid)
      Timeout.timeout(30) { Process.wait(pid) }
    rescue Errno::ESRCH, Errno::ECHILD
      nil
    rescue Timeout::Error
      Process.kill("KILL", pid)
      Process.wait(pid)
    end
  end
end

Dir.mktmpdir("flyjobs-bench") do |tmp|
  gem_dir = File.join(tmp, "gem")
  # FLYJOBS_BENCH_GEM: another copy of the gem (e.g. an older commit's, to measure a change).
  FileUtils.cp_r(File.expand_path(ENV.fetch("FLYJOBS_BENCH_GEM", File.join(ROOT, "ruby"))), gem_dir)
  FileUtils.rm_rf(File.join(gem_dir, "test"))
  FileUtils.cp(SO, File.join(gem_dir, "lib", "flyjobs_ruby.so"))
  app = File.join(tmp, "app")
  write_app(app, File.join(gem_dir, "lib"))

  redis_port = free_port
  redis = Process.spawn("redis-server", "--port", redis_port.to_s, "--bind", "127.0.0.1", "--save", "",
                        "--appendonly", "no", "--dir", tmp, out: File::NULL)
  redis_url = "redis://127.0.0.1:#{redis_port}/0"
  Timeout.timeout(10) do
    TCPSocket.new("127.0.0.1", redis_port).close
  rescue Errno::ECONNREFUSED
    sleep 0.05
    retry
  end

  base = { "RAILS_ENV" => "production", "BUNDLE_GEMFILE" => nil, "FLYJOBS_LOG" => "warn" }
  n, threads = opts[:backlog], opts[:threads]
  flyjobs = lambda do |round|
    db = "bench_#{Process.pid}_#{round}"
    run!({}, PSQL, "-q", PG_URL, "-c", "CREATE DATABASE #{db}")
    env = base.merge("FLYJOBS_DATABASE_URL" => PG_URL.sub(%r{/[^/?]*(\?|\z)}) { "/#{db}#{Regexp.last_match(1)}" },
                     "BENCH_N" => n.to_s)
    run!(env, RbConfig.ruby, "-e", ENQUEUE_FLYJOBS, chdir: app)
    # FLYJOBS_BENCH_WRAP prefixes the worker command, e.g. "perf record -g -o /tmp/w.data --".
    rate = drain(env, [*ENV.fetch("FLYJOBS_BENCH_WRAP", "").split, RbConfig.ruby, File.join(gem_dir, "bin", "fly-machine-worker"), "--app", app,
                       "--concurrency", threads.to_s, "--wait", "forever"], app, n)
    # The worker stopped (TERM) after its graceful stop wrote every completion: all n are
    # completed in the database, not just performed.
    db_url = env["FLYJOBS_DATABASE_URL"]
    completed = IO.popen([PSQL, "-tA", db_url, "-c", "SELECT count(*) FROM flyjobs_jobs WHERE state = 'completed'"], &:read).to_i
    raise "flyjobs completed #{completed} of #{n} jobs in the database" unless completed == n

    rate
  ensure
    system(PSQL, "-q", PG_URL, "-c", "DROP DATABASE IF EXISTS #{db} WITH (FORCE)", out: File::NULL)
  end
  sidekiq = lambda do |_round|
    env = base.merge("BENCH_ADAPTER" => "sidekiq", "REDIS_URL" => redis_url, "BENCH_N" => n.to_s)
    run!(env, RbConfig.ruby, "-e", ENQUEUE_SIDEKIQ, chdir: app)
    drain(env, ["sidekiq", "-r", app, "-c", threads.to_s, "-q", "default"], app, n)
  end

  # FLYJOBS_BENCH_ONLY=flyjobs: one flyjobs drain, no Sidekiq (for profiling).
  if ENV["FLYJOBS_BENCH_ONLY"] == "flyjobs"
    puts format("flyjobs: %.0f jobs/s, %.0f worker CPU µs/job", *flyjobs.call(0))
    next
  end

  ratios = []
  puts "round | flyjobs jobs/s | Sidekiq jobs/s | ratio | worker CPU µs/job flyjobs / Sidekiq"
  opts[:rounds].times do |i|
    round = i + 1
    if round.odd?
      a = flyjobs.call(round)
      b = sidekiq.call(round)
    else
      b = sidekiq.call(round)
      a = flyjobs.call(round)
    end
    (a, a_cpu), (b, b_cpu) = a, b
    ratios << a / b
    puts format("%d | %.0f | %.0f | %.3f | %.0f / %.0f", round, a, b, a / b, a_cpu, b_cpu)
    $stdout.flush
  end
  sorted = ratios.sort
  median = sorted.size.odd? ? sorted[sorted.size / 2] : (sorted[sorted.size / 2 - 1] + sorted[sorted.size / 2]) / 2
  puts
  puts "| what | min ratio | median ratio |"
  puts "|---|---:|---:|"
  puts format("| no-op Active Job jobs/s, bin/fly-machine-worker ÷ sidekiq -r app, %d threads, %d backlog, PostgreSQL vs Redis | %.3f | %.3f |",
              threads, n, sorted.first, median)
ensure
  if redis
    Process.kill("TERM", redis)
    Process.wait(redis)
  end
end
