# frozen_string_literal: true

require "json"

module FlyJobs
  # A claimed job as the worker hands it to Ruby code.
  #
  # @!attribute [r] id       @return [Integer] the flyjobs job id (Active Job's provider_job_id)
  # @!attribute [r] queue    @return [String]
  # @!attribute [r] name     @return [String, nil] display name (the job class)
  # @!attribute [r] attempts @return [Integer] attempts so far, this one included
  # @!attribute [r] payload  @return [Object] the payload as JSON.parse gives it (built by the
  #   extension from the stored JSON, not re-parsed in Ruby)
  class Job
    attr_reader :id, :queue, :name, :attempts, :payload

    # @api private
    def initialize(lease)
      @id = lease.job_id
      @queue = lease.queue
      @name = lease.name.to_s.empty? ? nil : lease.name
      @attempts = lease.attempts
      @payload = lease.payload
    end

    def inspect
      "#<FlyJobs::Job id=#{id} queue=#{queue.inspect} name=#{name.inspect} attempts=#{attempts}>"
    end
  end
end
