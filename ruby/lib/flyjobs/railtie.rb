# frozen_string_literal: true

require "rails/railtie"
# Defined now, before Active Job reads `config.active_job.queue_adapter = :fly_machine`: Rails
# finds the adapter class by name and does not autoload third-party adapters.
require "active_job/queue_adapters/fly_machine_adapter"

module FlyJobs
  # Rails integration:
  # - `config.flyjobs.*` and `config/flyjobs.yml` (one section per environment) fill
  #   {FlyJobs.config}; `config.flyjobs` wins over the file, and anything left unset comes from
  #   the env vars of DESIGN.md in the core.
  # - `config.active_job.queue_adapter = :fly_machine` selects the adapter.
  # - The embedded scaler starts lazily, at the first enqueue of each server process (so after
  #   Puma forks its workers), never in a worker process (bin/fly-machine-worker sets
  #   FLYJOBS_WORKER=1).
  # - `rails generate flyjobs:install`.
  class Railtie < ::Rails::Railtie
    config.flyjobs = ActiveSupport::OrderedOptions.new

    config.after_initialize do |app|
      FlyJobs::Railtie.apply(app)
    end

    generators do
      require_relative "../generators/flyjobs/install/install_generator"
    end

    # @api private
    def self.apply(app)
      file = app.root.join("config", "flyjobs.yml")
      FlyJobs.config.merge!(app.config_for(:flyjobs).to_h) if file.exist?
      FlyJobs.config.merge!(app.config.flyjobs.to_h)
      # Off Fly the embedded emulator's machines are local processes that get only the env vars
      # named in the allowlist: let them boot in this process's Rails environment. (On Fly,
      # RAILS_ENV comes with the image and the machine config, as for every machine.)
      if ENV["FLY_MACHINE_ID"].to_s.empty? && FlyJobs.config.env_allowlist.nil? && ENV["FLYJOBS_ENV_ALLOWLIST"].to_s.empty?
        FlyJobs.config.env_allowlist = %w[RAILS_ENV]
      end
      # Worker machines run this app's binstub (rails generate flyjobs:install writes it), or
      # the gem's executable pointed at this app.
      binstub = app.root.join("bin", "fly-machine-worker")
      FlyJobs.default_worker_command =
        binstub.exist? ? [binstub.to_s] : [File.expand_path("../../bin/fly-machine-worker", __dir__), "--app", app.root.to_s]
    end
  end
end
