# frozen_string_literal: true

require "active_job"
# flyjobs.rb loads this file through the Railtie while it is itself loading: requiring it back
# then would be a circular require (a warning under `ruby -w`).
require "flyjobs" unless defined?(FlyJobs::Client)
require "flyjobs/active_job_support"

module ActiveJob
  module QueueAdapters
    # Active Job adapter for flyjobs: jobs go into the flyjobs queue (PostgreSQL, or SQLite on a
    # laptop) and run in `bin/fly-machine-worker` on Fly Machines that the scaler boots on demand.
    #
    #   # config/application.rb
    #   config.active_job.queue_adapter = :fly_machine
    #
    # Priorities (lower first), queues, scheduled jobs (`set(wait:)`), bulk enqueue
    # (`ActiveJob.perform_all_later`, Rails >= 7.1) and `provider_job_id` (the flyjobs job id)
    # are supported. Rails finds this class by name from `:fly_machine`.
    class FlyMachineAdapter < (defined?(AbstractAdapter) ? AbstractAdapter : Object)
      # @param client [FlyJobs::Client, nil] defaults to the process-wide FlyJobs.client
      def initialize(client: nil)
        super()
        @client = client
      end

      # @return [String] the job id
      def enqueue(job)
        enqueue_at(job, nil)
      end

      # @param timestamp [Numeric, nil] epoch seconds; run no earlier than this
      def enqueue_at(job, timestamp)
        fields = FlyJobs::ActiveJobSupport.new_job(job, timestamp)
        job.provider_job_id = client.enqueue(**fields)
      end

      # All jobs in one transaction: all are enqueued, or none (the error propagates).
      # @return [Integer] how many were enqueued
      def enqueue_all(jobs)
        fields = jobs.map do |job|
          at = job.respond_to?(:scheduled_at) ? job.scheduled_at : nil
          FlyJobs::ActiveJobSupport.new_job(job, at)
        end
        ids = client.enqueue_many(fields)
        jobs.zip(ids).each do |job, id|
          job.provider_job_id = id
          job.successfully_enqueued = true if job.respond_to?(:successfully_enqueued=)
        end
        ids.size
      end

      # @return [Boolean] whether this worker process is quieting (SIGTERM): long jobs may stop early
      def stopping?(_job = nil)
        FlyJobs.stopping?
      end

      private

      def client
        @client || FlyJobs.client
      end
    end
  end
end
