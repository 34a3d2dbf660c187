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
    #   class RenderJob < ApplicationJob
    #     flyjobs_options machine: "performance-2x", region: %w[ams fra]
    #   end
    #   RenderJob.set(machine: "performance-4x").perform_later(video)   # this one only
    #
    # `max_attempts` bounds the core's own retries of an exception that escapes Active Job (after
    # `retry_on`/`discard_on` had their say); nil = the queue's setting, then the core's default.
    # `machine` is a Fly size (`shared-cpu-1x` … `performance-16x`, `shared-cpu-1x:1024` for more
    # memory) and `region` a region code or a list; unset, the queue's settings apply. A size Fly
    # does not sell raises FlyJobs::ConfigError at enqueue, listing the valid ones.
    module Options
      KEYS = %i[max_attempts unique_key machine region].freeze

      def self.included(base)
        base.extend(ClassMethods)
        base.class_attribute :flyjobs_options_hash, instance_accessor: false, default: {}
        base.prepend(SetPlacement)
      end

      # `set(machine:, region:)` for one enqueue; Active Job ignores keys it does not know.
      # `ConfiguredJob#perform_later` hands them to `enqueue` (Rails 6.1) or `set` (Rails 7).
      module SetPlacement
        # @return [Hash] machine:/region: given to `set` for this job
        def flyjobs_placement
          @flyjobs_placement ||= {}
        end

        def set(options = {})
          remember_placement(options)
          super
        end

        def enqueue(options = {})
          remember_placement(options)
          super
        end

        private

        def remember_placement(options)
          placement = options.slice(:machine, :region)
          flyjobs_placement.merge!(placement) unless placement.empty?
        end
      end

      # Class methods for jobs.
      module ClassMethods
        # @param options [Hash] max_attempts: Integer, unique_key: String or Proc(job),
        #   machine: String (a Fly size), region: String or Array<String>
        # @return [Hash] the options in effect
        def flyjobs_options(**options)
          unknown = options.keys - Options::KEYS
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
      placement = job.respond_to?(:flyjobs_placement) ? job.flyjobs_placement : {}
      {
        queue: job.queue_name.to_s,
        payload: job.serialize,
        priority: job.priority || 0,
        run_at: timestamp && Time.at(timestamp.to_f),
        max_attempts: options[:max_attempts],
        name: job.class.name,
        unique_key: unique_key,
        machine: placement.fetch(:machine, options[:machine]),
        region: placement.fetch(:region, options[:region])
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
