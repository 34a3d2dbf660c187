# frozen_string_literal: true

require "rails/generators"

module FlyJobs
  module Generators
    # `rails generate flyjobs:install`: selects the adapter in config/application.rb, writes
    # config/initializers/flyjobs.rb and bin/fly-machine-worker, and adds a README section on the
    # Fly API token and the separate worker app.
    class InstallGenerator < ::Rails::Generators::Base
      namespace "flyjobs:install"
      source_root File.expand_path("templates", __dir__)
      desc "Sets up flyjobs: Active Job on on-demand Fly Machines."

      def select_adapter
        application_rb = File.join(destination_root, "config", "application.rb")
        return if File.exist?(application_rb) && File.read(application_rb).include?(":fly_machine")

        application "config.active_job.queue_adapter = :fly_machine"
      end

      def initializer_file
        template "initializer.rb", "config/initializers/flyjobs.rb"
      end

      def worker_binstub
        template "fly-machine-worker", "bin/fly-machine-worker"
        chmod "bin/fly-machine-worker", 0o755
      end

      def readme_section
        readme_path = File.join(destination_root, "README.md")
        create_file "README.md", "" unless File.exist?(readme_path)
        return if File.read(readme_path).include?("## Background jobs (flyjobs)")

        append_to_file "README.md", "\n#{File.read(File.join(self.class.source_root, "README.md"))}"
      end

      def show_note
        say "\nflyjobs installed. Set the Fly API token as a secret (never in the image):"
        say "  fly secrets set FLY_API_TOKEN=$(fly tokens create deploy)"
        say "See the \"Background jobs (flyjobs)\" section added to README.md."
      end
    end
  end
end
