# frozen_string_literal: true

# End to end, for real: a generated Rails 6.1 app with `config.active_job.queue_adapter =
# :fly_machine` is loaded in this process (the "server"); perform_later writes to the embedded
# SQLite queue and wakes the embedded scaler, which boots emulator machines that run the app's
# bin/fly-machine-worker; the jobs write what they saw to tmp/out.jsonl.
$LOAD_PATH.unshift(File.expand_path("../../lib", __dir__))
require "minitest/autorun"
require "json"
require "timeout"
require_relative "rails_app"

ENV["RAILS_ENV"] = "development"
# Tests need no Fly-like boot latencies; everything else is the production code path.
ENV["FLYJOBS_EMULATOR_LATENCY"] ||= "none"
RailsApp.generate! unless ENV["FLYJOBS_REUSE_APP"] == "1" && File.exist?(File.join(RailsApp::ROOT, "bin", "fly-machine-worker"))
FileUtils.rm_f(File.join(RailsApp::ROOT, "tmp", "out.jsonl"))
# The embedded emulator's default image is the current directory, as in `rails server`.
Dir.chdir(RailsApp::ROOT)
require File.join(RailsApp::ROOT, "config", "environment")

Minitest.after_run { FlyJobs.reset! }

class ActiveJobTest < Minitest::Test
  TIMEOUT = Integer(ENV.fetch("FLYJOBS_TEST_TIMEOUT", "90"))

  def tag
    @tag ||= "#{name}-#{SecureRandom.hex(3)}"
  end

  # Lines written by jobs with this test's tag, once `count` of them exist.
  def wait_for(count = 1, tag: self.tag, timeout: TIMEOUT)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    loop do
      lines = Out.read.select { |l| l["tag"] == tag }
      return lines if lines.size >= count
      if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
        flunk "timed out after #{timeout}s waiting for #{count} line(s) tagged #{tag}; got #{lines.inspect}\n#{machine_logs}"
      end
      sleep 0.1
    end
  end

  # The last lines of the emulator machines' output, for failure messages.
  def machine_logs
    url = FlyJobs.client.local_api_url or return "(no local Machines API started)"
    require "net/http"
    auth = { "Authorization" => "Bearer test" }
    machines = JSON.parse(Net::HTTP.get(URI("#{url}/v1/apps/flyjobs-local/machines"), auth))
    machines.last(6).map do |m|
      logs = Net::HTTP.get(URI("#{url}/emulator/apps/flyjobs-local/machines/#{m["id"]}/logs"), auth)
      "--- machine #{m["id"]} (#{m["state"]}):\n#{logs.lines.last(25).join}"
    end.join("\n")
  rescue StandardError => e
    "(machine logs unavailable: #{e.class}: #{e.message})"
  end

  def wait_for_state(id, states, timeout: TIMEOUT)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    loop do
      job = FlyJobs.client.job(id)
      return job if job && Array(states).include?(job["state"])
      flunk "job #{id} never reached #{states.inspect}: #{job.inspect}\n#{machine_logs}" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
      sleep 0.2
    end
  end

  def test_the_generator_installed_the_adapter_and_the_worker
    assert_includes File.read("config/application.rb"), "config.active_job.queue_adapter = :fly_machine"
    assert File.executable?("bin/fly-machine-worker")
    assert File.exist?("config/initializers/flyjobs.rb")
    assert_includes File.read("README.md"), "FLY_API_TOKEN"
    assert_includes File.read("README.md"), "FLYJOBS_WORKER_APP"
    assert_kind_of ActiveJob::QueueAdapters::FlyMachineAdapter, ActiveJob::Base.queue_adapter
  end

  def test_settings_come_from_config_flyjobs_and_config_flyjobs_yml
    queues = FlyJobs.config.queues
    assert_equal({ max_machines: 1, concurrency: 1, wait: 30 }, queues["urgent"], "from config/flyjobs.yml")
    assert_equal 2, queues["default"][:max_machines], "from config.flyjobs"
    assert_equal [File.join(RailsApp::ROOT, "bin", "fly-machine-worker")], FlyJobs.default_worker_command
  end

  def test_perform_later_runs_in_a_worker_machine
    job = EchoJob.perform_later(tag, 1, "two", { "three" => 3 })
    assert_kind_of Integer, job.provider_job_id
    line = wait_for.first
    assert_equal [1, "two", { "three" => 3 }], line["args"]
    assert_equal job.provider_job_id, line["provider_job_id"]
    assert_equal job.job_id, line["job_id"]
    refute_nil line["machine"], "the job must run in an emulator machine (FLY_MACHINE_ID set)"
    refute_equal Process.pid, line["pid"]
  end

  def test_set_wait_runs_no_earlier_than_asked
    enqueued = Time.now.to_f
    EchoJob.set(wait: 3.seconds).perform_later(tag)
    line = wait_for.first
    assert_operator line["at"], :>=, enqueued + 3
  end

  def test_set_queue_and_priority
    EchoJob.set(queue: "urgent", priority: 5).perform_later(tag)
    line = wait_for.first
    assert_equal "urgent", line["queue"]
    assert_equal 5, line["priority"]
  end

  def test_retry_on_with_attempts
    FlakyJob.perform_later(tag)
    lines = wait_for(3)
    assert_equal [1, 2, 3], lines.map { |l| l["executions"] }
    sleep 1
    assert_equal 3, Out.read.count { |l| l["tag"] == tag }, "no fourth run after success"
  end

  def test_discard_on
    job = DiscardJob.perform_later(tag)
    wait_for
    wait_for_state(job.provider_job_id, %w[completed])
    assert_equal 1, Out.read.count { |l| l["tag"] == tag }, "a discarded job is not retried"
  end

  def test_a_job_that_always_raises_ends_in_the_dead_set
    job = DoomedJob.perform_later(tag)
    wait_for
    dead = wait_for_state(job.provider_job_id, %w[dead])
    text = JSON.generate(dead)
    assert_includes text, "ArgumentError"
    assert_includes text, "doomed #{tag}"
    assert_equal 1, Out.read.count { |l| l["tag"] == tag }
  end

  def test_the_dashboard_mounted_in_the_app_retries_a_dead_job
    require "rack/mock"
    job = DoomedJob.perform_later(tag)
    id = job.provider_job_id
    wait_for_state(id, %w[dead])
    app = Rack::MockRequest.new(Rails.application)
    # Rails' development host check allows localhost
    page = app.get("/flyjobs/jobs/#{id}", "HTTP_HOST" => "localhost")
    assert_equal 200, page.status, page.body[0, 500]
    assert_includes page.body, 'href="/flyjobs/dead"'
    assert_includes page.body, "DoomedJob"
    cookie = page.headers.to_h.find { |k, _| k.casecmp?("set-cookie") }&.last.to_s
    token = cookie[/flyjobs_csrf=(\h+)/, 1]
    assert token, "the dashboard sets its CSRF cookie: #{page.headers.inspect}"
    refused = app.post("/flyjobs/jobs/#{id}/retry", "HTTP_HOST" => "localhost", params: { _csrf: token })
    assert_equal 403, refused.status, "no cookie, no change"
    done = app.post("/flyjobs/jobs/#{id}/retry", "HTTP_HOST" => "localhost", "HTTP_COOKIE" => "flyjobs_csrf=#{token}",
                                                  params: { _csrf: token })
    assert_equal 303, done.status, done.body
    assert_equal "/flyjobs/jobs/#{id}", done.location
    # retried: it runs again in a worker machine (and fails again: DoomedJob always raises)
    wait_for(2)
  end

  def test_a_global_id_argument
    widget = Widget.create!(name: "sprocket-#{tag}")
    WidgetJob.perform_later(tag, widget)
    line = wait_for.first
    assert_equal widget.name, line["widget"]
    assert_equal widget.to_global_id.to_s, line["gid"]
  end

  def test_two_jobs_at_once
    SlowJob.perform_later("#{tag}-a", 3)
    SlowJob.perform_later("#{tag}-b", 3)
    a = wait_for(2, tag: "#{tag}-a")
    b = wait_for(2, tag: "#{tag}-b")
    a_start, a_end = a.map { |l| l["at"] }
    b_start, b_end = b.map { |l| l["at"] }
    assert_operator a_start, :<, b_end, "the two jobs must overlap in time"
    assert_operator b_start, :<, a_end, "the two jobs must overlap in time"
  end

  def test_locale_and_time_zone_are_carried
    I18n.with_locale(:fr) { Time.use_zone("Tokyo") { EchoJob.perform_later(tag) } }
    line = wait_for.first
    assert_equal "fr", line["locale"]
    assert_equal "Tokyo", line["zone"]
  end

  def test_an_unserializable_argument_is_refused_and_nothing_is_enqueued
    before = EchoJob.perform_later("#{tag}-before").provider_job_id
    e = assert_raises(ActiveJob::SerializationError) { EchoJob.perform_later(tag, Object.new) }
    assert_match(/Unsupported argument type: Object/, e.message)
    after = EchoJob.perform_later("#{tag}-after").provider_job_id
    assert_equal before + 1, after, "the refused job must not have been written"
  end

  def test_sigterm_lets_the_running_job_finish_and_exits_zero
    job = SlowJob.set(queue: "manual").perform_later(tag, 3)
    env = { "FLYJOBS_DATABASE_URL" => FlyJobs.client.config["database_url"] }
    log = File.join(RailsApp::ROOT, "log", "manual-worker.log")
    pid = Process.spawn(env, "bin/fly-machine-worker", "--queues", "manual", "--wait", "forever",
                        out: log, err: [:child, :out])
    begin
      wait_for(1, timeout: 60)
      Process.kill("TERM", pid)
      _, status = Timeout.timeout(30) { Process.wait2(pid) }
      pid = nil
      assert_equal 0, status.exitstatus, File.read(log)
      finished = Out.read.select { |l| l["tag"] == tag }
      assert_equal %w[start end], finished.map { |l| l["event"] }
      assert_equal true, finished.last["stopping"], "jobs see stopping? once the worker is quiet"
      wait_for_state(job.provider_job_id, %w[completed], timeout: 5)
    ensure
      if pid
        Process.kill("KILL", pid)
        Process.wait(pid)
      end
    end
  end
end
