# frozen_string_literal: true

class SlowJob < ApplicationJob
  def perform(tag, seconds)
    Out.write("tag" => tag, "event" => "start")
    sleep seconds
    Out.write("tag" => tag, "event" => "end", "stopping" => FlyJobs.stopping?)
  end
end
