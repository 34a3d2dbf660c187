# frozen_string_literal: true

require "json"

module FlyJobs
  # A connection to the flyjobs queue (PostgreSQL or SQLite) and, when the scaler runs in this
  # process, to the Machines API. Off Fly (no FLY_MACHINE_ID) the core starts its embedded Machines
  # API emulator in-process, so "machines" are local worker processes.
  #
  # Every option not given is passed to the core as nil, and the core fills it from its env var
  # (FLYJOBS_DATABASE_URL, FLY_API_TOKEN, FLY_APP_NAME, ...) or its documented default: this gem
  # has no defaults of its own.
  #
  # @example
  #   FlyJobs::Client.open(database_url: "sqlite://tmp/jobs.db") do |client|
  #     id = client.enqueue(queue: "mail", payload: { "user_id" => 42 }, name: "WelcomeMail")
  #   end
  class Client
    # Opens a client. With a block, yields it and closes it afterwards.
    #
    # @param options [Hash] core settings: database_url, app_name, api_token, api_hostname,
    #   image_ref, worker_app, queues ({"mail" => {max_machines: 3, concurrency: 5, wait: 600}}), ...
    # @return [Client, Object] the client, or the block's value
    # @raise [FlyJobs::ConfigError] for a bad setting (the message names it)
    def self.open(**options)
      client = new(Native::Client._open(FlyJobs.native_options(options)))
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
    # @param queue [String]
    # @param payload [Object] anything JSON can represent; opaque to the core
    # @param priority [Integer] lower runs first (as in Active Job)
    # @param run_at [Time, nil] run no earlier than this
    # @param max_attempts [Integer, nil] nil = the queue's/core's default
    # @param name [String, nil] display name (the job class)
    # @param unique_key [String, nil] while a job with this key is pending, returns that job
    # @return [Integer] the job id
    def enqueue(payload:, queue: "default", priority: 0, run_at: nil, max_attempts: nil, name: nil, unique_key: nil)
      @native._enqueue(queue.to_s, JSON.generate(payload), Integer(priority || 0), time_arg(run_at),
                       max_attempts && Integer(max_attempts), name&.to_s, unique_key&.to_s)
    end

    # Enqueues many jobs in one transaction: all or nothing.
    #
    # @param jobs [Array<Hash>] each with the keyword arguments of {#enqueue}
    # @return [Array<Integer>] the job ids, in order
    def enqueue_many(jobs)
      rows = jobs.map do |j|
        j = j.transform_keys(&:to_sym)
        [(j[:queue] || "default").to_s, JSON.generate(j.fetch(:payload)), Integer(j[:priority] || 0),
         time_arg(j[:run_at]), j[:max_attempts] && Integer(j[:max_attempts]), j[:name]&.to_s,
         j[:unique_key]&.to_s]
      end
      @native._enqueue_many(rows)
    end

    # Starts the embedded scaler in this process (idempotent). Call it in server processes only:
    # the Railtie does it lazily, never inside a worker machine.
    # @return [void]
    def start_scaler
      @native._start_scaler
      nil
    end

    # A worker that pulls jobs of `queues` from the queue.
    #
    # @param queues [Array<String>, String]
    # @param concurrency [Integer, nil] jobs at once (= Ruby threads of {Worker#run})
    # @param wait [Integer, Float, String, :forever, nil] seconds idle before the worker exits
    #   ("600", "10m", "forever"); nil = the core's default
    # @param pool [String, nil] what an idle worker machine does when it leaves: "none" (exit),
    #   "stop", "suspend"; nil = the core's default
    # @return [Worker]
    def worker(queues: ["default"], concurrency: nil, wait: nil, pool: nil)
      queues = queues.is_a?(String) ? queues.split(",") : Array(queues).map(&:to_s)
      native = @native._worker(queues, concurrency && Integer(concurrency), FlyJobs.wait_arg(wait), pool&.to_s)
      Worker.new(native)
    end

    # The command worker machines run unless FLYJOBS_WORKER_COMMAND (or the worker_command
    # option) says otherwise; the scaler appends --queues, --concurrency, --wait and --pool.
    # @param argv [Array<String>]
    def default_worker_command=(argv)
      @native._set_default_worker_command(Array(argv).map(&:to_s))
    end

    # The stored state of a job, or nil if there is none.
    # @param id [Integer]
    # @return [Hash, nil] "id", "queue", "name", "state", "attempts", "payload", "last_error", ...
    def job(id)
      json = @native._job(Integer(id))
      json && JSON.parse(json)
    end

    # @return [String] the queue's database URL: as configured, or the core's embedded default
    #   (a SQLite file in the current directory). Contains the password, if the URL has one.
    def database_url
      @native._database_url
    end

    # @return [String, nil] the base URL of the embedded Machines API emulator, once this client
    #   started it (off Fly, with the scaler running)
    def emulator_url
      @native._emulator_url
    end

    # Closes the client (its pool; the scaler and the embedded emulator if it started them).
    # @return [void]
    def close
      @native._close
      nil
    end

    private

    def time_arg(time)
      return nil if time.nil?

      time.respond_to?(:to_f) ? time.to_f : Float(time)
    end
  end

  # @api private
  # Options for the core as a Hash of String => String/Integer/Float/true/false/nil/Hash.
  def self.native_options(options)
    options.each_with_object({}) do |(k, v), h|
      h[k.to_s] = case v
                  when Symbol then v.to_s
                  when Hash then v.each_with_object({}) { |(qk, qv), qh| qh[qk.to_s] = native_options(qv.to_h) }
                  else v
                  end
    end
  end

  # @api private
  # The wait setting as the core parses it: nil (the core's default), seconds, or a String
  # ("600", "10m", "forever"); :forever and Float::INFINITY mean "forever".
  def self.wait_arg(wait)
    case wait
    when nil, String then wait
    when Symbol then wait.to_s
    when Numeric then wait.to_f.infinite? ? "forever" : wait
    else wait.to_s
    end
  end
end
