# frozen_string_literal: true

require "optparse"

module FlyJobs
  # `bin/fly-machine-worker`: the process a worker machine runs. Boots the Rails app in the
  # current directory (config/environment.rb), then runs the core's worker loop on N Ruby threads,
  # each job through ActiveJob::Base.execute. SIGTERM/SIGINT (what Fly sends on stop): quiet, let
  # running jobs finish, exit 0. Exits 0 when the queue stayed empty for --wait seconds.
  class CLI
    USAGE = "Usage: fly-machine-worker [--queues a,b] [--wait SECONDS|forever] [--concurrency N] [--pool MODE] [--app DIR]"

    attr_reader :queues, :wait, :concurrency, :pool, :app_dir

    def initialize(argv, out: $stdout)
      @out = out
      @queues = nil # the core reads FLYJOBS_WORKER_QUEUES, else serves "default"
      @wait = nil
      @concurrency = nil
      @pool = nil
      @app_dir = Dir.pwd
      parse(argv)
    end

    # @return [Integer] exit status
    def run
      # Mark this process as a worker before the app boots: it never runs the embedded scaler.
      ENV["FLYJOBS_WORKER"] = "1"
      boot_app
      require "flyjobs"
      require "flyjobs/active_job_support"
      FlyJobs::Logs.start
      worker = FlyJobs.client.worker(queues: queues, concurrency: concurrency, wait: wait, pool: pool)
      FlyJobs.current_worker = worker
      %w[TERM INT].each do |signal|
        Signal.trap(signal) { worker.quiet }
      end
      log "flyjobs worker #{Process.pid}: queues=#{queues ? queues.join(",") : "(FLYJOBS_WORKER_QUEUES or default)"} concurrency=#{worker.concurrency} wait=#{wait || "the queue's"}"
      on_failure = lambda do |job, error, outcome|
        decision = outcome["outcome"] == "retry" ? "retry at #{outcome["at"]}" : outcome["outcome"]
        log "flyjobs worker #{Process.pid}: job #{job&.id} (#{job&.name}) raised #{error.class}: #{error.message} -> #{decision}"
      end
      worker.run(threads: worker.concurrency, on_failure: on_failure) { |job| FlyJobs::ActiveJobSupport.perform(job) }
      FlyJobs::Logs.drain
      log "flyjobs worker #{Process.pid}: done"
      0
    end

    private

    def parse(argv)
      OptionParser.new do |o|
        o.banner = USAGE
        o.on("-q", "--queues LIST", "comma-separated queues to serve (default: $FLYJOBS_WORKER_QUEUES or default)") do |v|
          @queues = v.split(",").map(&:strip).reject(&:empty?)
          raise OptionParser::InvalidArgument, "--queues is empty" if @queues.empty?
        end
        o.on("-w", "--wait SECONDS", "idle seconds before exiting, or forever (default: the queue's setting)") { |v| @wait = v }
        o.on("-c", "--concurrency N", Integer, "jobs at once, one Ruby thread each") { |v| @concurrency = v }
        o.on("--pool MODE", "none, stop or suspend: what this machine does when idle (set by the scaler)") { |v| @pool = v }
        o.on("-a", "--app DIR", "Rails app directory (default: the current directory)") { |v| @app_dir = File.expand_path(v) }
        o.on("-h", "--help") do
          @out.puts o
          exit 0
        end
      end.parse!(argv)
    end

    def boot_app
      env = File.join(app_dir, "config", "environment.rb")
      unless File.exist?(env)
        raise FlyJobs::ConfigError, "fly-machine-worker: no Rails app in #{app_dir} (#{env} is missing); " \
                                    "run it from the app's directory or pass --app DIR"
      end
      Dir.chdir(app_dir)
      require env
      # Load every job class now, not in a worker thread mid-job.
      ::Rails.application.eager_load! if defined?(::Rails) && ::Rails.respond_to?(:application)
    end

    def log(line)
      @out.puts(line)
      @out.flush
    end
  end
end
