# frozen_string_literal: true

module FlyJobs
  # Base class of every error flyjobs raises. One subclass per core error kind; the native
  # extension picks the class from the kind (one mapping function in bindings/ruby/src/error.rs)
  # and keeps the core's message.
  #
  # A job's own exception is never wrapped in one of these: it is recorded on the job as data.
  #
  # @example
  #   begin
  #     client.enqueue(queue: "bad queue!", payload: {})
  #   rescue FlyJobs::InvalidError => e
  #     e.kind        #=> "invalid"
  #     e.retryable?  #=> false
  #   end
  class Error < StandardError
    # @return [Integer, nil] HTTP status of the Machines API answer that caused it, if any
    attr_reader :status
    # @return [String, nil] the Machines API's fly-request-id, if it sent one (quote it to Fly)
    attr_reader :request_id
    # @return [Integer, nil] the job concerned, if any
    attr_reader :job_id
    # @return [Array<String>] messages of the underlying causes, outermost first
    attr_reader :causes

    # @return [String] the stable snake_case kind shared by every binding ("not_found", ...)
    def kind
      self.class::KIND
    end

    # @return [Boolean] whether retrying the same operation may succeed
    def retryable?
      @retryable ? true : false
    end

    KIND = "error"
  end

  # kind name => exception class name; the order and names follow core/src/error.rs (ErrorKind::ALL).
  ERROR_KINDS = {
    "config" => "ConfigError",
    "auth" => "AuthError",
    "not_found" => "NotFoundError",
    "conflict" => "ConflictError",
    "rate_limited" => "RateLimitedError",
    "capacity" => "CapacityError",
    "timeout" => "TimeoutError",
    "invalid" => "InvalidError",
    "api" => "ApiError",
    "transport" => "TransportError",
    "store" => "StoreError",
    "serialization" => "SerializationError",
    "shutdown" => "ShutdownError"
  }.freeze

  ERROR_KINDS.each do |kind, name|
    klass = Class.new(Error)
    klass.const_set(:KIND, kind)
    const_set(name, klass)
  end

  # @param kind [String] a core error kind
  # @return [Class] the exception class for it (FlyJobs::Error for a kind this gem does not know)
  def self.error_class_for(kind)
    name = ERROR_KINDS[kind.to_s]
    name ? const_get(name) : Error
  end
end
