# frozen_string_literal: true

require "active_job"

module FlyJobs
  # Active Job glue shared by the adapter (enqueue side) and bin/fly-machine-worker (perform side).
  module ActiveJobSupport
    # Per-class options, like Sidekiq's `sidekiq_options`:
    #
    #   class ImportJob < ApplicationJob
    #     flyjobs_options max_attempts: 3, unique_key: ->(job) { "import-#{job.arguments.first}" }
    #   end
    #
    # `max_attempts` bounds the core's own retries of an exception that escapes Active Job (after
    # `retry_on`/`discard_on` had their say); nil = the queue's setting, then the core's default.
    module Options
      def self.included(base)
        base.extend(ClassMethods)
        base.class_attribute :flyjobs_options_hash, instance_accessor: false, default: {}
      end

      # Class methods for jobs.
      module ClassMethods
        # @param options [Hash] max_attempts: Integer, unique_key: String or Proc(job)
        # @return [Hash] the options in effect
        def flyjobs_options(**options)
          unknown = options.keys - %i[max_attempts unique_key]
          raise ArgumentError, "unknown flyjobs_options #{unknown.join(", ")}" if unknown.any?

          self.flyjobs_options_hash = flyjobs_options_hash.merge(options) unless options.empty?
          flyjobs_options_hash
        end
      end
    end

    module_function

    # The core's NewJob fields for an Active Job. `job.serialize` runs here, so an argument that
    # Active Job cannot serialize raises ActiveJob::SerializationError before anything is written.
    # @return [Hash]
    def new_job(job, timestamp = nil)
      options = job.class.respond_to?(:flyjobs_options) ? job.class.flyjobs_options : {}
      unique_key = options[:unique_key]
      unique_key = unique_key.call(job) if unique_key.respond_to?(:call)
      {
        queue: job.queue_name.to_s,
        payload: job.serialize,
        priority: job.priority || 0,
        run_at: timestamp && Time.at(timestamp.to_f),
        max_attempts: options[:max_attempts],
        name: job.class.name,
        unique_key: unique_key
      }
    end

    # Runs a claimed job inside the booted app, as Sidekiq's JobWrapper does: the Rails reloader
    # (connection pool and code reloading) around ActiveJob::Base.execute. Exceptions that
    # Active Job does not handle (retry_on exhausted, no rescue_from) propagate to the worker,
    # which records them and lets the core's retry policy decide.
    # @param job [FlyJobs::Job]
    def perform(job)
      data = job.payload.merge("provider_job_id" => job.id)
      if defined?(::Rails) && ::Rails.respond_to?(:application) && ::Rails.application
        ::Rails.application.reloader.wrap { ::ActiveJob::Base.execute(data) }
      else
        ::ActiveJob::Base.execute(data)
      end
    end
  end
end

ActiveSupport.on_load(:active_job) { include FlyJobs::ActiveJobSupport::Options }
