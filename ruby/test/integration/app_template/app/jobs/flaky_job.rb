# frozen_string_literal: true

# Fails twice, then succeeds: Active Job's retry_on re-enqueues it through the adapter.
class FlakyJob < ApplicationJob
  class Flake < StandardError; end
  retry_on Flake, wait: 0, attempts: 3

  def perform(tag)
    Out.write("tag" => tag, "executions" => executions)
    raise Flake, "flake #{executions}" if executions < 3
  end
end
