# frozen_string_literal: true

# flyjobs: Active Job runs on Fly Machines booted on demand (config/application.rb selects the
# :fly_machine adapter). Every setting is optional: an unset one comes from its env var, then
# the documented default.
#
#   FLYJOBS_DATABASE_URL  the queue: postgres://... in production (shared by web and worker
#                         machines); unset = SQLite on this host (development)
#   FLY_API_TOKEN         lets the app boot worker machines; a Fly secret, never in the image
#   FLYJOBS_WORKER_APP    boot workers in a separate app (credential isolation; see README)
#
# Off Fly (development, test) the gem starts a local Machines API emulator: "machines" are local
# `bin/fly-machine-worker` processes, so perform_later behaves as in production.
Rails.application.configure do
  # config.flyjobs.database_url = ENV["DATABASE_URL"]
  # config.flyjobs.queues = {
  #   "default" => { max_machines: 5, min_machines: 0, concurrency: 5, wait: 600, size: "shared-cpu-1x" },
  #   "mailers" => { max_machines: 2, wait: "forever", min_machines: 1 }
  # }
  #
  # Or config/flyjobs.yml, one section per environment, with the same keys.
end
