# frozen_string_literal: true

# Always raises, and nothing in Active Job handles it: the core's retry policy gets the
# exception, and with one attempt allowed the job goes to the dead set.
class DoomedJob < ApplicationJob
  flyjobs_options max_attempts: 1

  def perform(tag)
    Out.write("tag" => tag)
    raise ArgumentError, "doomed #{tag}"
  end
end
