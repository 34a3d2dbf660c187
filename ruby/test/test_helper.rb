# frozen_string_literal: true

# Unit tests: the gem over the real native extension (lib/flyjobs_ruby.so), no machines.
# STRESS=1 runs every test under GC.stress (ankane/tokenizers-ruby does the same): a Ruby object
# that the glue forgot to keep alive shows up as a crash here.
$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
# The core's info records (worker registered, idle; leaving) would drown the test output.
ENV["FLYJOBS_LOG"] ||= "warn"
require "minitest/autorun"
require "tmpdir"
require "fileutils"
require "json"
require "time"
require "securerandom"
require "flyjobs"

module FlyJobsTestHelpers
  # A client on a fresh SQLite queue, or with FLYJOBS_TEST_STORE=postgres on the PostgreSQL of
  # FLYJOBS_TEST_DATABASE_URL (shared: tests use their own queue names, see #q). No scaler:
  # nothing boots machines in unit tests.
  def open_client(**opts, &block)
    FlyJobs::Client.open(database_url: test_database_url, **opts, &block)
  end

  def test_database_url
    if ENV["FLYJOBS_TEST_STORE"] == "postgres"
      ENV.fetch("FLYJOBS_TEST_DATABASE_URL") { raise "FLYJOBS_TEST_STORE=postgres needs FLYJOBS_TEST_DATABASE_URL" }
    else
      @tmpdir ||= Dir.mktmpdir("flyjobs-test")
      "sqlite://#{@tmpdir}/queue.db"
    end
  end

  # A queue name of this test alone (the PostgreSQL database is shared by the whole run).
  def q(name)
    @queue_suffix ||= SecureRandom.hex(4)
    "#{name}-#{@queue_suffix}"
  end

  def teardown_tmpdir
    FileUtils.rm_rf(@tmpdir) if @tmpdir
  end

  # Polls until the block is truthy, or fails after `timeout` seconds.
  def wait_until(timeout: 10, interval: 0.05, message: "condition")
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    loop do
      result = yield
      return result if result
      flunk "timed out after #{timeout}s waiting for #{message}" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
      sleep interval
    end
  end
end

if ENV["STRESS"] == "1"
  module FlyJobsGCStress
    def run(*)
      GC.stress = true
      super
    ensure
      GC.stress = false
    end
  end
  Minitest::Test.prepend(FlyJobsGCStress)
end
