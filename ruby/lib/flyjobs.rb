# frozen_string_literal: true

require "json"
require "rbconfig"
require_relative "flyjobs/version"
require_relative "flyjobs/errors"
require_relative "flyjobs/native"
require_relative "flyjobs/job"
require_relative "flyjobs/client"
require_relative "flyjobs/worker"
require_relative "flyjobs/configuration"
require_relative "flyjobs/logs"
require_relative "flyjobs/dashboard"

# flyjobs: background jobs on on-demand Fly Machines. A Rust core (queue, retries, scaler,
# worker loop) with this gem as its Ruby face and an Active Job adapter:
#
#   # config/application.rb
#   config.active_job.queue_adapter = :fly_machine
#
# Outside Rails: {FlyJobs::Client.open} and {FlyJobs::Client#worker}.
module FlyJobs
  @mutex = Mutex.new
  @client = nil
  @client_pid = nil
  @current_worker = nil

  class << self
    # @return [FlyJobs::Configuration] the process-wide settings
    def config
      @config ||= Configuration.new
    end

    # @yieldparam config [FlyJobs::Configuration]
    def configure
      yield config
    end

    # The process-wide client, opened on first use with {config}. After a fork (Puma workers,
    # Spring, Passenger) the child opens its own: the parent's handle belongs to the parent's
    # runtime threads, which do not exist in the child. In server processes it also starts the
    # embedded scaler; never in a worker process.
    # @return [FlyJobs::Client]
    def client
      pid = Process.pid
      client = @client
      return client if client && @client_pid == pid

      @mutex = Mutex.new if @client_pid && @client_pid != pid # a lock held at fork time stays held
      @mutex.synchronize do
        return @client if @client && @client_pid == pid

        @client = nil
        Logs.start
        opened = Client.open(default_worker_command: default_worker_command, **config.to_options)
        opened.start_scaler if start_scaler?
        @client_pid = pid
        @client = opened
        close_at_exit(pid)
        opened
      end
    end

    # The command that serves the app's local Machines API off Fly: one daemon shared by every
    # process of the app (Puma workers, the console, bin/fly-machine-worker...), started by the
    # first one that needs it; its machines outlive any one process, and when the last process
    # leaves it stops them with their stop signal and grace.
    # @return [Array<String>]
    def local_api_command
      [RbConfig.ruby, "-I", __dir__, "-e", "require 'flyjobs'; FlyJobs::Native._serve_local_api(ARGV.fetch(0))"]
    end

    # When this process exits (a Puma or Unicorn worker told to stop, `rails s` and Ctrl-C), close
    # its client: the scaler stops and gives up the leader lock at once (the next process to
    # start does not wait for it to expire), and this process stops counting as a user of the
    # local Machines API.
    def close_at_exit(pid)
      return if @closing_at_exit == pid

      @closing_at_exit = pid
      at_exit { reset! if Process.pid == pid }
    end
    private :close_at_exit

    # Use this client instead of opening one from {config} (tests, custom set-ups).
    # @param client [FlyJobs::Client, nil]
    def client=(client)
      @mutex.synchronize do
        @client = client
        @client_pid = client && Process.pid
      end
    end

    # Closes the process-wide client if this process opened it.
    # @return [void]
    def reset!
      @mutex.synchronize do
        @client.close if @client && @client_pid == Process.pid
        @client = nil
        @client_pid = nil
      end
    end

    # Whether this process is a worker (bin/fly-machine-worker sets FLYJOBS_WORKER=1): a worker
    # never runs the scaler. Any value counts, as in the core, which refuses to start a scaler
    # whenever FLYJOBS_WORKER is set.
    # @return [Boolean]
    def worker_process?
      ENV.key?("FLYJOBS_WORKER")
    end

    # @return [Boolean] whether this process should run the embedded scaler
    def start_scaler?
      return false if worker_process?

      config.scaler.nil? ? true : config.scaler ? true : false
    end

    # @return [Array<String>] what worker machines run (unless FLYJOBS_WORKER_COMMAND is set):
    #   the app's bin/fly-machine-worker in Rails (the Railtie sets it), else this gem's executable
    def default_worker_command
      @default_worker_command || [File.expand_path("../bin/fly-machine-worker", __dir__)]
    end

    attr_writer :default_worker_command

    # @api private
    attr_accessor :current_worker

    # The core's settings vocabulary: every option, queue setting and worker option with its env
    # var, what it accepts, its default and what it does.
    # @return [Hash{String=>Array<Hash>}] "options", "queue_settings", "worker_options"
    def option_specs
      JSON.parse(Native._option_specs)
    end

    # @return [Boolean] whether this process's worker was asked to quiet or stop (jobs may check
    #   it to stop early; Active Job's adapter answers `stopping?` with it)
    def stopping?
      worker = current_worker
      worker ? worker.stopping? : false
    end
  end
end

require_relative "flyjobs/railtie" if defined?(Rails::Railtie)
