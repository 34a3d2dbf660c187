# frozen_string_literal: true

module FlyJobs
  VERSION = "0.1.0"
end
