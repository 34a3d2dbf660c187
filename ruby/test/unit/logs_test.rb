# frozen_string_literal: true

require_relative "../test_helper"
require "stringio"

# The core's log records reach the app's logger (Rails.logger in Rails; FlyJobs.logger here).
class LogsTest < Minitest::Test
  include FlyJobsTestHelpers

  def test_core_records_reach_the_logger
    out = StringIO.new
    FlyJobs.logger = Logger.new(out)
    FlyJobs::Logs.start
    FlyJobs::Native._log_for_test("warn", "machine 148e never registered")
    FlyJobs::Native._log_for_test("debug", "below the level")
    wait_until(message: "the record in the log") { out.string.include?("[flyjobs] machine 148e never registered") }
    assert_match(/^W, .*\[flyjobs\] machine 148e never registered/, out.string)
    refute_includes out.string, "below the level"
  ensure
    FlyJobs.logger = nil
  end
end
