# frozen_string_literal: true

# The Sidekiq side of bench/src/sidekiq_compare.rs (one measurement per run; the Rust harness
# interleaves runs with flyjobs's). Sidekiq 6.4 (Debian ruby-sidekiq) on the redis-server the
# harness started, plain Sidekiq::Worker, in-process launcher with 5 threads:
#   ruby bench/sidekiq_side.rb REDIS_URL BACKLOG ENQUEUE_N
# prints one JSON line: {"enqueue_us": µs per perform_async, "jobs_per_s": drain rate of BACKLOG}.
require "json"
require "sidekiq"
require "sidekiq/launcher"

redis_url, backlog, enqueue_n = ARGV[0], Integer(ARGV[1]), Integer(ARGV[2])
Sidekiq.logger.level = Logger::WARN
Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)
Sidekiq.redis = { url: redis_url, size: 10 }

DONE = Queue.new
$count = 0
$target = 0
$lock = Mutex.new

class NoopJob
  include Sidekiq::Worker

  def perform(_i)
    n = $lock.synchronize { $count += 1 }
    DONE << true if n == $target
  end
end

def now = Process.clock_gettime(Process::CLOCK_MONOTONIC)

Sidekiq.redis(&:flushdb)
# Enqueue: one job at a time from one thread, as an app's request does it.
100.times { |i| NoopJob.perform_async(i) }
t = now
enqueue_n.times { |i| NoopJob.perform_async(i) }
enqueue_us = (now - t) * 1e6 / enqueue_n
Sidekiq.redis(&:flushdb)

# Drain: a backlog loaded in bulk, then 5 processor threads until the last job ran.
(0...backlog).each_slice(1000) do |s|
  Sidekiq::Client.push_bulk("class" => NoopJob, "args" => s.map { |i| [i] })
end
$target = backlog
launcher = Sidekiq::Launcher.new(Sidekiq.options.merge(concurrency: 5, queues: ["default"]))
t = now
launcher.run
DONE.pop
elapsed = now - t
launcher.quiet
launcher.stop
puts JSON.generate(enqueue_us: enqueue_us, jobs_per_s: backlog / elapsed)
