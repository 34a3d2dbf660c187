# frozen_string_literal: true

module FlyJobs
  # Settings the gem passes to the core. Every one left nil is filled by the core from its env
  # var, then its documented default (DESIGN.md "Settings"): FLYJOBS_DATABASE_URL, FLY_API_TOKEN,
  # FLY_APP_NAME, FLY_IMAGE_REF, FLY_API_HOSTNAME, FLYJOBS_WORKER_APP, ...
  #
  # In Rails, set them with `config.flyjobs.*` or in `config/flyjobs.yml` (one section per
  # environment); `config.flyjobs` wins over the file.
  #
  # @example config/initializers/flyjobs.rb
  #   Rails.application.config.flyjobs.database_url = ENV["DATABASE_URL"]
  #   Rails.application.config.flyjobs.queues = {
  #     "default" => { max_machines: 5, concurrency: 5, wait: 600 },
  #     "mail" => { max_machines: 2, min_machines: 1, wait: "forever", size: "shared-cpu-1x" }
  #   }
  class Configuration
    # Settings that go to the core as they are.
    CORE_OPTIONS = %i[
      database_url app_name api_token api_hostname image_ref machine_id region worker_app
      max_machines worker_command env_allowlist max_payload_bytes request_timeout boot_timeout
      lease_duration
    ].freeze
    # Per-queue settings that go to the core as they are.
    QUEUE_OPTIONS = %i[max_machines min_machines concurrency wait size cpus memory_mb region max_attempts].freeze

    attr_accessor(*CORE_OPTIONS)
    # @return [Hash{String=>Hash}] queue name => settings (QUEUE_OPTIONS)
    attr_reader :queues
    # @return [Boolean, nil] start the embedded scaler in this (server) process; nil = yes unless
    #   this process is a worker (FLYJOBS_WORKER=1 or bin/fly-machine-worker)
    attr_accessor :scaler

    def initialize
      @queues = {}
      @scaler = nil
    end

    # @param queues [Hash{String,Symbol=>Hash}]
    def queues=(queues)
      @queues = (queues || {}).each_with_object({}) do |(name, settings), h|
        settings = (settings || {}).to_h.transform_keys(&:to_sym)
        unknown = settings.keys - QUEUE_OPTIONS
        raise ConfigError, "unknown setting(s) #{unknown.join(", ")} for queue #{name}; known: #{QUEUE_OPTIONS.join(", ")}" if unknown.any?

        h[name.to_s] = settings
      end
    end

    # Sets every key of `hash` (String or Symbol keys), as from config/flyjobs.yml.
    # @return [self]
    def merge!(hash)
      (hash || {}).each do |key, value|
        next if value.nil?

        key = key.to_sym
        if key == :queues
          self.queues = queues.merge(value.to_h.transform_keys(&:to_s))
        elsif key == :scaler
          self.scaler = value
        elsif CORE_OPTIONS.include?(key)
          public_send(:"#{key}=", value)
        else
          raise ConfigError, "unknown flyjobs setting #{key}; known: #{(CORE_OPTIONS + %i[queues scaler]).join(", ")}"
        end
      end
      self
    end

    # @return [Hash] the options for {Client.open}; unset ones are left out (the core decides)
    def to_options
      opts = CORE_OPTIONS.each_with_object({}) do |k, h|
        v = public_send(k)
        h[k] = v unless v.nil?
      end
      opts[:queues] = queues unless queues.empty?
      opts
    end
  end
end
