# frozen_string_literal: true

require "json"

module FlyJobs
  # A connection to the flyjobs queue (PostgreSQL or SQLite) and, when the scaler runs in this
  # process, to the Machines API. Off Fly (no FLY_MACHINE_ID) the core starts its embedded Machines
  # API in-process, so "machines" are local worker processes.
  #
  # Options are the core's (FlyJobs.option_specs lists them, the README's settings table too);
  # every option not given comes from its env var (FLYJOBS_DATABASE_URL, FLY_API_TOKEN, ...) or its
  # default, decided by the core: this gem has no defaults of its own.
  #
  # @example
  #   FlyJobs::Client.open(database_url: "sqlite://tmp/jobs.db") do |client|
  #     id = client.enqueue(queue: "mail", payload: { "user_id" => 42 }, name: "WelcomeMail")
  #     client.job(id)["state"] #=> "ready"
  #   end
  class Client
    # Opens a client. With a block, yields it and closes it afterwards.
    #
    # @param default_worker_command [Array<String>, nil] what worker machines run unless the
    #   worker_command option (FLYJOBS_WORKER_COMMAND) says otherwise
    # @param local_api_command [Array<String>, nil] off Fly, the command that serves the app's
    #   shared local Machines API (default: this gem's, {FlyJobs.local_api_command}); [] runs it
    #   inside this process instead, where its machines live and die with this process
    # @param options [Hash] core options: database_url, queues ({"mail" => {max_machines: 3}}), ...
    # @return [Client, Object] the client, or the block's value
    # @raise [FlyJobs::ConfigError] for a bad option (the message names it and what it accepts)
    def self.open(default_worker_command: nil, local_api_command: nil, **options)
      command = Array(default_worker_command || FlyJobs.default_worker_command).map(&:to_s)
      local = Array(local_api_command || FlyJobs.local_api_command).map(&:to_s)
      client = new(Native::Client._open(FlyJobs.to_json(options), command, local))
      return client unless block_given?

      begin
        yield client
      ensure
        client.close
      end
    end

    # @api private
    def initialize(native)
      @native = native
    end

    # Enqueues one job. Never waits for a machine.
    #
    # @param payload [Object] anything JSON can represent; opaque to the core
    # @param queue [String]
    # @param priority [Integer] lower runs first (as in Active Job)
    # @param run_at [Time, Numeric, nil] run no earlier than this (Time or epoch seconds)
    # @param max_attempts [Integer, nil] nil = the queue's setting
    # @param name [String, nil] display name (the job class)
    # @param unique_key [String, nil] while a job with this key is pending, returns that job
    # @param machine [String, Hash, nil] a Fly size ("performance-2x", "shared-cpu-1x:1024") or
    #   { cpus:, memory_mb:, cpu_kind: }; nil = the queue's size
    # @param region [String, Array<String>, nil] region code(s); nil = the queue's regions
    # @return [Integer] the job id
    # @raise [FlyJobs::InvalidError] for a bad field or an oversized payload; nothing is written
    def enqueue(payload:, queue: "default", priority: 0, run_at: nil, max_attempts: nil, name: nil, unique_key: nil,
                machine: nil, region: nil)
      @native._enqueue(FlyJobs.to_json(job_fields(payload: payload, queue: queue, priority: priority, run_at: run_at,
                                                  max_attempts: max_attempts, name: name, unique_key: unique_key,
                                                  machine: machine, region: region)))
    end

    # Enqueues many jobs in one transaction: all or nothing.
    #
    # @param jobs [Array<Hash>] each with the keyword arguments of {#enqueue}
    # @return [Array<Integer>] the job ids, in order
    def enqueue_many(jobs)
      fields = jobs.map { |j| job_fields(**j.transform_keys(&:to_sym)) }
      @native._enqueue_many(FlyJobs.to_json(fields))
    end

    # @param id [Integer]
    # @return [Hash, nil] the stored job: "id", "queue", "name", "state", "attempts", "payload",
    #   "last_error", "run_at", ...; nil if there is none
    def job(id)
      call("job", Integer(id))
    end

    # The failed runs of a job, oldest first: what the dashboard's job page shows.
    # @param id [Integer]
    # @return [Array<Hash>] each with "attempt", "machine", "started_at", "ended_at", "outcome"
    #   (the state it went to: scheduled, ready, dead or discarded) and "error" ("class",
    #   "message", "backtrace")
    def attempts(id)
      call("attempts", Integer(id))
    end

    # A page of jobs in id order; pass the last id as after_id for the next page.
    # @param queue [String, nil]
    # @param state [String, Symbol, nil] scheduled, ready, running, completed, dead, discarded
    # @param name [String, nil] the job class
    # @param limit [Integer] page size (max 10,000)
    # @param after_id [Integer, nil]
    # @return [Array<Hash>]
    def jobs(queue: nil, state: nil, name: nil, limit: 100, after_id: nil)
      call("jobs", { queue: queue, state: state&.to_s, name: name, limit: limit, after_id: after_id })
    end

    # Cancels a job that has not run yet (ready or scheduled).
    # @return [Hash] the job, now discarded
    # @raise [FlyJobs::ConflictError] if it is running, finished or dead
    def cancel(id)
      call("cancel", Integer(id))
    end

    # Discards a waiting or dead job.
    # @return [Hash] the job
    def discard(id)
      call("discard", Integer(id))
    end

    # Runs a dead or discarded job again (ready, attempts reset).
    # @return [Hash] the job
    def retry(id)
      call("retry", Integer(id))
    end

    # Deletes every waiting job (ready or scheduled) of a queue: what a test suite calls between
    # tests. Running and dead jobs stay.
    # @return [Integer] how many were deleted
    def clear(queue)
      call("clear", queue.to_s)
    end

    # @return [Array<Hash>] per queue: "queue", "ready", "scheduled", "running", "dead", ...
    def stats
      call("stats")
    end

    # @return [Array<Hash>] registered workers
    def workers
      call("workers")
    end

    # @return [Array<Hash>] worker machines as the Machines API reports them ("id", "state", ...)
    def machines
      call("machines")
    end

    # @return [Array<Hash>] recent boot failures of worker machines, newest first ("queue",
    #   "release", "machine_id", "exit_code", "reason", "log_tail", "at", "cleared")
    def boot_failures
      call("boot_failures")
    end

    # Forgets the boot failures of a queue (every queue: nil) so the scaler boots its machines
    # again, as `flyjobs scaler --reset-failures` does.
    # @return [Integer] how many were cleared
    def reset_boot_failures(queue = nil)
      call("reset_boot_failures", queue&.to_s)
    end

    # Answers one request to the web dashboard (see {FlyJobs::Dashboard}, the Rack app).
    # @param request [Hash] method, path, mount, query, headers, body, read_only
    # @return [Hash] "status", "headers" ([[name, value], ...]), "body"
    def dashboard(request)
      call("dashboard", request)
    end

    # @return [Hash] the resolved settings (token and database password redacted)
    def config
      call("config")
    end

    # Starts the embedded scaler in this process (idempotent). Call it in server processes only:
    # the Railtie does it lazily, never inside a worker machine.
    # @return [void]
    def start_scaler
      call("start_scaler")
      nil
    end

    # A worker that pulls jobs from the queue. Options left nil come from the env
    # (FLYJOBS_WORKER_QUEUES, ...) or the settings of the worker's queue.
    #
    # @param queues [Array<String>, String, nil] queues to serve ("a,b" or ["a", "b"])
    # @param concurrency [Integer, nil] jobs at once (= Ruby threads of {Worker#run})
    # @param wait [Numeric, String, Symbol, nil] idle seconds before the worker leaves ("10m",
    #   :forever)
    # @param pool [String, Symbol, nil] none, stop or suspend
    # @return [Worker]
    def worker(queues: nil, concurrency: nil, wait: nil, pool: nil)
      wait = "forever" if wait.is_a?(Numeric) && wait.to_f.infinite?
      Worker.new(@native._worker(FlyJobs.to_json(queues: queues, concurrency: concurrency, wait: wait, pool: pool)))
    end

    # @return [String, nil] the base URL of the local Machines API, once this client started it
    #   (off Fly, with the scaler running)
    def local_api_url
      call("local_api_url")
    end

    # Closes the client (its pool; the scaler and the local Machines API if it started them).
    # @return [void]
    def close
      @native._close
      nil
    end

    private

    def call(name, arg = nil)
      JSON.parse(@native._call(name, FlyJobs.to_json(arg)))
    end

    def job_fields(payload:, queue: "default", priority: 0, run_at: nil, max_attempts: nil, name: nil, unique_key: nil,
                   machine: nil, region: nil)
      { queue: queue.to_s, payload: payload, priority: priority, run_at: run_at && time_arg(run_at),
        max_attempts: max_attempts, name: name&.to_s, unique_key: unique_key&.to_s, machine: machine,
        region: region }
    end

    def time_arg(time)
      time.respond_to?(:to_r) && !time.is_a?(String) ? time.to_r.to_f : time
    end
  end

  # @api private
  # JSON for the native extension: keys as strings, symbols as strings, nil values dropped from
  # option maps so the core applies its env var and default.
  def self.to_json(value)
    JSON.generate(plain(value))
  end

  # @api private
  def self.plain(value)
    case value
    when Hash then value.each_with_object({}) { |(k, v), h| h[k.to_s] = plain(v) unless v.nil? }
    when Array then value.map { |v| plain(v) }
    when Symbol then value.to_s
    when Time then value.to_r.to_f
    else value
    end
  end
end
