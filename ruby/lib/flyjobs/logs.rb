# frozen_string_literal: true

require "logger"

module FlyJobs
  # The core's log records (the scaler's warnings, a worker that cannot boot, ...) written to the
  # app's logger: Rails.logger in Rails, else FlyJobs.logger (stderr). The core never calls into
  # Ruby from its own threads, so one Ruby thread per process drains its records (with the GVL
  # released while it waits) and writes them here.
  module Logs
    LEVELS = { "error" => :error, "warn" => :warn, "info" => :info, "debug" => :debug, "trace" => :debug }.freeze

    @pid = nil
    @mutex = Mutex.new

    class << self
      # Starts capturing in this process (again after a fork: the drain thread does not survive
      # it). Level from FLYJOBS_LOG, else info.
      # @return [void]
      def start
        return if @pid == Process.pid

        @mutex = Mutex.new if @pid
        @mutex.synchronize do
          return if @pid == Process.pid

          Native._logs_install(ENV.fetch("FLYJOBS_LOG", "info"))
          @pid = Process.pid
          @thread = Thread.new do
            Thread.current.name = "flyjobs-logs"
            loop { drain(2.0) }
          end
        end
      end

      # Writes what the core logged, waiting up to `seconds` for something to arrive.
      # @return [Integer] records written
      def drain(seconds = 0.0)
        batch = JSON.parse(Native._logs_drain(Float(seconds)))
        logger = FlyJobs.logger
        batch["records"].each do |r|
          logger.public_send(LEVELS.fetch(r["level"], :info), "[flyjobs] #{r["message"]}")
        end
        logger.warn("[flyjobs] #{batch["dropped"]} log records dropped (logger too slow)") if batch["dropped"].positive?
        batch["records"].size
      rescue StandardError => e
        warn "flyjobs: log forwarding failed: #{e.class}: #{e.message}"
        0
      end
    end
  end

  class << self
    # @return [Logger] where the core's log records go: Rails.logger in Rails, else stderr
    def logger
      @logger || (defined?(::Rails) && ::Rails.respond_to?(:logger) && ::Rails.logger) || (@stderr_logger ||= Logger.new($stderr))
    end

    attr_writer :logger
  end
end
