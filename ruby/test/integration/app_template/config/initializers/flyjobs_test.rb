# frozen_string_literal: true

# Settings of the integration tests (on top of the generated config/initializers/flyjobs.rb);
# the "urgent" queue is set in config/flyjobs.yml.
# The queue is the embedded default: SQLite in the app directory, the emulator in the test
# process, worker machines are local `bin/fly-machine-worker` processes.
Rails.application.configure do
  config.i18n.available_locales = %i[en fr]
  config.flyjobs.queues = {
    "default" => { max_machines: 2, concurrency: 2, wait: 30 },
    # Served only by the worker a test starts by hand (SIGTERM test): the scaler boots nothing.
    "manual" => { max_machines: 0 },
    # The Puma test's long jobs: one machine runs them all at once.
    "slow" => { max_machines: 1, concurrency: 5, wait: 30 }
  }
end
