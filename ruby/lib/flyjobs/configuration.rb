# frozen_string_literal: true

module FlyJobs
  # Settings the gem passes to the core, under the core's own names (FlyJobs.option_specs; the
  # README's settings table): database_url, queues, max_machines, worker_command, ... Every one
  # left nil is filled by the core from its env var, then its default. The core checks the values:
  # a bad one is a FlyJobs::ConfigError naming the option, the value and what it accepts.
  #
  # In Rails, set them with `config.flyjobs.*` or in `config/flyjobs.yml` (one section per
  # environment); `config.flyjobs` wins over the file.
  #
  # @example config/initializers/flyjobs.rb
  #   Rails.application.config.flyjobs.database_url = ENV["DATABASE_URL"]
  #   Rails.application.config.flyjobs.queues = {
  #     "*" => { concurrency: 5 },
  #     "mail" => { max_machines: 2, min_machines: 1, wait: "forever", pool: "suspend" }
  #   }
  class Configuration
    # The core's option names (the one list lives in the core).
    OPTIONS = JSON.parse(Native._option_specs)["options"].map { |s| s["name"].to_sym }.freeze

    attr_accessor(*OPTIONS)
    # @return [Boolean, nil] start the embedded scaler in this (server) process; nil = yes unless
    #   this process is a worker (FLYJOBS_WORKER=1 or bin/fly-machine-worker)
    attr_accessor :scaler

    # Sets every key of `hash` (String or Symbol keys), as from config/flyjobs.yml.
    # @return [self]
    def merge!(hash)
      (hash || {}).each do |key, value|
        next if value.nil?

        key = key.to_sym
        if key == :scaler
          self.scaler = value
        elsif key == :queues && value.is_a?(Hash)
          # Entries merge by queue name (YAML gives String keys, Ruby code Symbols).
          base = queues.is_a?(Hash) ? queues.transform_keys(&:to_s) : {}
          self.queues = base.merge(value.transform_keys(&:to_s))
        elsif OPTIONS.include?(key)
          public_send(:"#{key}=", value)
        else
          raise ConfigError, "unknown flyjobs option #{key} (known: #{(OPTIONS + %i[scaler]).join(", ")})"
        end
      end
      self
    end

    # @return [Hash] the options for {Client.open}; unset ones are left out (the core decides)
    def to_options
      OPTIONS.each_with_object({}) do |k, h|
        v = public_send(k)
        h[k] = v unless v.nil?
      end
    end
  end
end
