# frozen_string_literal: true

module FlyJobs
  # Pulls jobs from the queue and runs them in Ruby. The core claims jobs, keeps their leases alive
  # and applies the retry policy; Ruby only runs them: Rust never calls into Ruby from its own
  # threads. Each Ruby thread waits for its next job with the GVL released, waking every
  # {POLL_SECONDS} so that signals, Thread#kill and Timeout are served.
  #
  # @example
  #   worker = client.worker(queues: %w[mail default], concurrency: 4, wait: 600)
  #   trap("TERM") { worker.quiet }
  #   worker.run { |job| Mailer.deliver(job.payload) }   # returns when idle for 600 s or quiet
  class Worker
    # Longest time a Ruby thread stays in native code without checking for interrupts.
    POLL_SECONDS = 2.0

    # @api private
    def initialize(native)
      @native = native
    end

    # @return [Integer] jobs at once
    def concurrency
      @native._concurrency
    end

    # Runs jobs on `threads` Ruby threads until none is left to run: the queue stayed empty for
    # `wait` seconds, or {#quiet}/{#stop} was called. A job whose block returns is completed; a job
    # whose block raises a StandardError is failed with the exception's class, message and
    # backtrace, and the core's retry policy decides its next attempt or the dead set. Any other
    # exception (Interrupt, SystemExit) gives the job back untouched and propagates.
    #
    # @param threads [Integer] Ruby threads (default: the worker's concurrency)
    # @param on_failure [#call, nil] called as on_failure.(job, exception, outcome) after a job
    #   raised and was recorded; outcome is the core's decision: {"outcome" => "retry",
    #   "at" => "2026-…Z"} or {"outcome" => "dead"}
    # @yieldparam job [FlyJobs::Job]
    # @return [void]
    def run(threads: concurrency, on_failure: nil, &block)
      raise ArgumentError, "FlyJobs::Worker#run needs a block" unless block

      runners = Array.new(Integer(threads)) do |i|
        Thread.new(@native._slot) do |slot|
          Thread.current.name = "flyjobs-worker-#{i}"
          work(slot, on_failure, &block)
        ensure
          # A runner interrupted while waiting leaves a claim in flight: a job it finds goes
          # straight back to the queue.
          slot._close
        end
      end
      runners.each(&:join)
      nil
    ensure
      runners&.each { |t| t.kill if t.alive? }
      # Every runner has returned: nothing is running, so this releases only what an
      # interrupted runner left behind, and leaves the worker registry.
      @native._stop(0.0)
    end

    # Claims nothing new; jobs already running finish. {#run} returns once they have.
    # Safe to call from a signal handler.
    # @return [void]
    def quiet
      @native._quiet
      nil
    end

    # Quiets, waits up to `timeout` seconds for running jobs, gives back (releases) the leases of
    # jobs that have not finished (they run again elsewhere, untouched), and leaves the registry.
    # @param timeout [Numeric, nil] nil = the shutdown_timeout option (FLYJOBS_SHUTDOWN_TIMEOUT)
    # @return [void]
    def stop(timeout: nil)
      @native._stop(Float(timeout || shutdown_timeout))
      nil
    end

    # @return [Float] seconds a stopping worker gives running jobs (the shutdown_timeout option)
    def shutdown_timeout
      @native._shutdown_timeout
    end

    # @return [Boolean] whether the worker was asked to quiet or stop (visible to jobs)
    def stopping?
      @native._stopping
    end

    private

    # One native call per job after the first: `_complete_next` records the success and waits
    # for the next job with the GVL released once.
    def work(slot, on_failure)
      lease = next_lease(slot)
      while lease
        job = nil
        begin
          job = Job.new(lease)
          yield job
        rescue StandardError => e
          failure = { "class" => e.class.name.to_s, "message" => e.message.to_s, "backtrace" => e.backtrace || [] }
          outcome = JSON.parse(lease._fail(FlyJobs.to_json(failure)))
          on_failure&.call(job, e, outcome)
          lease = next_lease(slot)
        rescue Exception # rubocop:disable Lint/RescueException -- give the job back, then propagate
          lease._release
          raise
        else
          lease = slot._complete_next(lease, POLL_SECONDS)
          lease = next_lease(slot) if lease == false
        end
      end
    end

    def next_lease(slot)
      loop do
        lease = slot._next(POLL_SECONDS)
        return lease unless lease == false
      end
    end
  end
end
