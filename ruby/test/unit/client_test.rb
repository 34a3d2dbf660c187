# frozen_string_literal: true

require "time" # Time.iso8601, when this file runs without the rest of the suite
require "open3"
require "rbconfig"
require_relative "../test_helper"

class ClientTest < Minitest::Test
  include FlyJobsTestHelpers

  def setup
    @client = open_client
  end

  def teardown
    @client&.close
    teardown_tmpdir
  end

  def test_open_with_a_block_closes
    result = open_client { |c| c.enqueue(payload: { "a" => 1 }) }
    assert_kind_of Integer, result
  end

  def test_enqueue_returns_increasing_ids_and_stores_the_job
    a = @client.enqueue(queue: q("mail"), payload: { "to" => "a@example.com" }, name: "Mail", priority: 3)
    b = @client.enqueue(queue: q("mail"), payload: [1, 2, 3])
    assert_operator b, :>, a
    job = @client.job(a)
    assert_equal q("mail"), job["queue"]
    assert_equal "Mail", job["name"]
    assert_equal({ "to" => "a@example.com" }, job["payload"])
    assert_nil @client.job(b + 1_000_000)
  end

  def test_enqueue_many_is_all_or_nothing
    ids = @client.enqueue_many([{ queue: q("a"), payload: 1 }, { queue: q("b"), payload: 2, priority: -1 }])
    assert_equal 2, ids.size
    assert_equal ids.sort, ids
    assert_raises(FlyJobs::InvalidError) do
      @client.enqueue_many([{ queue: q("ok"), payload: 1 }, { queue: "not ok!", payload: 2 }])
    end
    after = @client.enqueue(queue: q("a"), payload: 3)
    assert_nil @client.job(ids.last + 1) unless after == ids.last + 1
  end

  def test_a_worker_runs_jobs_in_ruby_and_exits_when_idle
    ids = 3.times.map { |i| @client.enqueue(queue: q("w"), payload: { "n" => i }, name: "N") }
    seen = Queue.new
    worker = @client.worker(queues: [q("w")], concurrency: 2, wait: 1)
    assert_equal 2, worker.concurrency
    worker.run { |job| seen << [job.id, job.queue, job.name, job.payload["n"], job.attempts] }
    got = Array.new(seen.size) { seen.pop }.sort
    assert_equal ids, got.map(&:first)
    assert_equal [[q("w"), "N"]], got.map { |g| g[1, 2] }.uniq
    assert_equal [0, 1, 2], got.map { |g| g[3] }
    assert_equal [1], got.map(&:last).uniq
    ids.each { |id| assert_equal "completed", @client.job(id)["state"] }
  end

  def test_a_raising_job_is_failed_with_its_exception_and_goes_dead_after_max_attempts
    id = @client.enqueue(queue: q("f"), payload: {}, max_attempts: 1)
    worker = @client.worker(queues: [q("f")], wait: 1)
    failures = []
    worker.run(on_failure: ->(j, e, outcome) { failures << [j.id, e.class, outcome] }) { |_job| raise ArgumentError, "bad thing" }
    assert_equal [[id, ArgumentError]], failures.map { |f| f[0, 2] }
    assert_equal({ "outcome" => "dead" }, failures.first.last)
    job = @client.job(id)
    assert_equal "dead", job["state"]
    assert_includes JSON.generate(job), "ArgumentError"
    assert_includes JSON.generate(job), "bad thing"
    attempts = @client.attempts(id)
    assert_equal [[1, "dead", "ArgumentError", "bad thing"]],
                 attempts.map { |a| [a["attempt"], a["outcome"], a["error"]["class"], a["error"]["message"]] }
  end

  # The extension builds the payload as Ruby objects itself: it must be what JSON.parse gives.
  def test_a_job_payload_is_what_json_parse_gives
    payload = { "s" => "h\u00e9llo \u{1F600}", "i" => -7, "big" => 2**62, "u" => 2**63 + 1, "f" => 1.5,
                "list" => [nil, true, false, [], {}], "nested" => { "k" => ["v", 2] }, "" => "empty key" }
    payloads = [payload, [1, "two"], "text", 42, false]
    payloads.each { |p| @client.enqueue(queue: q("p"), payload: p) }
    seen = []
    @client.worker(queues: [q("p")], wait: 1, concurrency: 1).run { |job| seen << job.payload }
    expected = JSON.parse(JSON.generate(payloads))
    assert_equal expected, seen
    assert_equal Encoding::UTF_8, seen.first["s"].encoding
    assert seen.first.keys.all?(&:frozen?), "Hash keys are frozen copies, as JSON.parse's are"
  end

  # Ten jobs through one thread: each after the first comes from `_complete_next`, and each is
  # completed exactly once.
  def test_consecutive_jobs_on_one_thread_are_each_completed
    ids = 10.times.map { |i| @client.enqueue(queue: q("c"), payload: i) }
    seen = []
    @client.worker(queues: [q("c")], concurrency: 1, wait: 1).run { |job| seen << job.payload }
    assert_equal (0...10).to_a, seen.sort
    ids.each { |id| assert_equal "completed", @client.job(id)["state"] }
  end

  # magnus looked a wrapped class up the first time it wrapped an object, through a Ruby call
  # whose failure it unwrapped: an Interrupt pending right then panicked inside `_slot` (seen
  # under GC.stress). The classes are now looked up when the extension loads; here any const_get
  # during `_slot` raises, in a fresh process where nothing was wrapped yet.
  def test_wrapping_a_native_object_calls_no_ruby_method
    script = <<~RUBY
      require "flyjobs"
      client = FlyJobs::Client.open(database_url: ARGV[0])
      native = client.worker(queues: ["wrap"], wait: 1).instance_variable_get(:@native)
      trace = TracePoint.new(:c_call) { |tp| raise Interrupt, "const_get called" if tp.method_id == :const_get }
      slot = trace.enable { native._slot }
      print slot.class.name
      client.close
    RUBY
    out, status = Open3.capture2e(RbConfig.ruby, "-I#{File.expand_path("../../lib", __dir__)}", "-e", script, test_database_url)
    assert status.success?, out
    assert_equal "FlyJobs::Native::Slot", out.lines.last
  end

  def test_quiet_from_another_thread_ends_run_and_the_gvl_is_released_while_waiting
    worker = @client.worker(queues: [q("idle")], wait: "forever")
    ticks = 0
    ticker = Thread.new { loop { ticks += 1; sleep 0.01 } }
    runner = Thread.new { worker.run { |_| } }
    # Other Ruby threads must run while the worker waits in native code (GVL released); on a
    # loaded machine or under GC.stress they are slow, so wait for progress, not for a time.
    start = ticks
    wait_until(timeout: 30, message: "the ticker to run while the worker waits") { ticks > start + 10 }
    assert runner.alive?
    refute worker.stopping?
    worker.quiet
    assert worker.stopping?
    assert runner.join(10), "run did not return within 10 s of quiet"
    ticker.kill
  end

  def test_an_interrupt_reaches_a_waiting_worker_thread
    worker = @client.worker(queues: [q("idle2")], wait: "forever")
    runner = Thread.new { worker.run { |_| } }
    runner.report_on_exception = false
    sleep 0.3
    runner.raise(Interrupt)
    assert_raises(Interrupt) { runner.join(5) }
  end

  # Puma and friends fork after boot: the child must not use the parent's client (its runtime
  # threads and connections belong to the parent); FlyJobs.client opens a new one there.
  def test_a_forked_child_gets_its_own_client
    FlyJobs.config.database_url = test_database_url
    FlyJobs.config.scaler = false
    parent_client = FlyJobs.client
    parent_id = parent_client.enqueue(queue: q("fork"), payload: { "from" => "parent" })
    child = fork do
      child_client = FlyJobs.client
      ok = !child_client.equal?(parent_client) &&
           child_client.enqueue(queue: q("fork"), payload: { "from" => "child" }) > parent_id
      exit!(ok ? 0 : 1)
    end
    _, status = Process.wait2(child)
    assert status.success?, "the child could not enqueue through its own client"
    assert_operator parent_client.enqueue(queue: q("fork"), payload: {}), :>, parent_id + 1
  ensure
    FlyJobs.reset!
    FlyJobs.config.database_url = nil
    FlyJobs.config.scaler = nil
  end

  def test_a_failed_job_with_attempts_left_is_retried_later
    id = @client.enqueue(queue: q("r"), payload: {}, max_attempts: 3)
    outcomes = []
    @client.worker(queues: q("r"), wait: 1).run(on_failure: ->(_j, _e, o) { outcomes << o }) { raise "nope" }
    assert_equal ["retry"], outcomes.map { |o| o["outcome"] }
    assert_operator Time.iso8601(outcomes.first["at"]), :>, Time.now
    assert_equal "scheduled", @client.job(id)["state"]
  end

  def test_admin_calls
    ids = @client.enqueue_many([{ queue: q("adm"), payload: 1, name: "A" }, { queue: q("adm"), payload: 2, name: "B" },
                                { queue: q("adm"), payload: 3, name: "A", run_at: Time.now + 3600 }])
    assert_equal ids.values_at(0, 2), @client.jobs(queue: q("adm"), name: "A").map { |j| j["id"] }
    assert_equal [ids[2]], @client.jobs(queue: q("adm"), state: :scheduled).map { |j| j["id"] }
    assert_equal [ids[1]], @client.jobs(queue: q("adm"), limit: 1, after_id: ids[0]).map { |j| j["id"] }
    assert_equal "discarded", @client.cancel(ids[2])["state"]
    e = assert_raises(FlyJobs::ConflictError) { @client.cancel(ids[2]) }
    assert_equal ids[2], e.job_id
    assert_includes e.message, "discarded"
    assert_equal "ready", @client.retry(ids[2])["state"]
    stats = @client.stats.find { |s| s["queue"] == q("adm") }
    assert_equal 3, stats["ready"]
    assert_equal 3, @client.clear(q("adm"))
    assert_equal 0, @client.clear(q("adm"))
    assert_empty @client.jobs(queue: q("adm"))
    assert_kind_of Array, @client.workers
    assert_equal [], @client.machines
    assert_kind_of Array, @client.boot_failures
    assert_kind_of Integer, @client.reset_boot_failures(q("adm"))
    assert_equal [], @client.boot_failures.select { |f| f["queue"] == q("adm") }
    e = assert_raises(FlyJobs::InvalidError) { @client.reset_boot_failures("bad queue!") }
    assert_includes e.message, "bad queue!"
    assert_raises(FlyJobs::NotFoundError) { @client.cancel(ids.last + 1_000_000) }
    refute_includes JSON.generate(@client.config), "hunter2"
  end

  def test_wait_accepts_seconds_strings_and_forever
    assert_kind_of FlyJobs::Worker, @client.worker(queues: "#{q("a")},#{q("b")}", wait: 600)
    assert_kind_of FlyJobs::Worker, @client.worker(queues: q("a"), wait: "10m")
    assert_kind_of FlyJobs::Worker, @client.worker(queues: q("a"), wait: :forever)
    assert_kind_of FlyJobs::Worker, @client.worker(queues: q("a"), wait: Float::INFINITY)
    e = assert_raises(FlyJobs::ConfigError) { @client.worker(queues: q("a"), wait: "soon") }
    assert_includes e.message, "option wait must be seconds"
    refute_includes e.message, "--wait"
    e = assert_raises(FlyJobs::ConfigError) { @client.worker(queues: q("a"), pool: "nap") }
    assert_includes e.message, "option pool must be one of none, stop, suspend"
  end
end
