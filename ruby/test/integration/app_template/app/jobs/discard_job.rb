# frozen_string_literal: true

class DiscardJob < ApplicationJob
  class Nope < StandardError; end
  discard_on Nope

  def perform(tag)
    Out.write("tag" => tag, "executions" => executions)
    raise Nope, "discard me"
  end
end
