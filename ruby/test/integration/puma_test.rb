# frozen_string_literal: true

# The embedded default under a real app server (issue 16): Debian's Puma in cluster mode, with and
# without preload_app!, enqueues from its workers; one local Machines API serves the whole app.
$LOAD_PATH.unshift(File.expand_path("../../lib", __dir__))
require "minitest/autorun"
require "json"
require "net/http"
require "securerandom"
require "socket"
require "timeout"
require_relative "rails_app"

ENV["RAILS_ENV"] = "development"
ENV["FLYJOBS_EMULATOR_LATENCY"] ||= "none"
RailsApp.generate! unless ENV["FLYJOBS_REUSE_APP"] == "1" && File.exist?(File.join(RailsApp::ROOT, "bin", "fly-machine-worker"))

class PumaTest < Minitest::Test
  ROOT = RailsApp::ROOT
  OUT = File.join(ROOT, "tmp", "out.jsonl")
  TIMEOUT = Integer(ENV.fetch("FLYJOBS_TEST_TIMEOUT", "90"))

  def setup
    @tag = "#{name}-#{SecureRandom.hex(3)}"
    @port = free_port
    # Start from a stopped app: the previous test's (or suite's) local API has left.
    wait_until("the previous local Machines API to stop", timeout: 60) { local_apis.empty? }
  end

  def teardown
    stop_puma("KILL") if @puma
  end

  def free_port
    s = TCPServer.new("127.0.0.1", 0)
    s.addr[1]
  ensure
    s&.close
  end

  def start_puma(preload:)
    args = ["puma", "-w", "2", "-t", "5:5", "-b", "tcp://127.0.0.1:#{@port}", "-e", "development"]
    args << "--preload" if preload
    log = File.join(ROOT, "log", "puma-#{@port}.log")
    env = { "RAILS_ENV" => "development", "BUNDLE_GEMFILE" => File.join(ROOT, "Gemfile") }
    @puma = Process.spawn(env, *args, "config.ru", chdir: ROOT, out: log, err: [:child, :out], pgroup: true)
    @puma_log = log
    wait_until("puma to answer", timeout: 60) { get("/pid") }
  end

  def stop_puma(signal = "TERM")
    Process.kill(signal, @puma)
    Timeout.timeout(60) { Process.wait(@puma) }
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  ensure
    @puma = nil
  end

  def get(path)
    res = Net::HTTP.get_response(URI("http://127.0.0.1:#{@port}#{path}"))
    res.is_a?(Net::HTTPSuccess) ? res.body : nil
  rescue SystemCallError, Net::ReadTimeout, EOFError
    nil
  end

  def post(path, params)
    Net::HTTP.post_form(URI("http://127.0.0.1:#{@port}#{path}"), params).tap do |res|
      raise "#{path}: HTTP #{res.code}: #{res.body[0, 300]}" unless res.is_a?(Net::HTTPSuccess)
    end
  end

  def lines
    return [] unless File.exist?(OUT)

    File.readlines(OUT).map { |l| JSON.parse(l) }.select { |l| l["tag"] == @tag }
  end

  def wait_until(what, timeout: TIMEOUT)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    loop do
      result = yield
      return result if result
      if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
        log = @puma_log && File.exist?(@puma_log) ? File.read(@puma_log).lines.last(30).join : ""
        flunk "timed out after #{timeout}s waiting for #{what}\n--- puma log:\n#{log}"
      end
      sleep 0.1
    end
  end

  # The live local Machines API daemons of this app (state directories whose spec names ROOT).
  def local_apis
    Dir.glob(File.join(Dir.tmpdir, "flyjobs-local-*")).filter_map do |dir|
      spec = JSON.parse(File.read(File.join(dir, "spec.json"))) rescue next # rubocop:disable Style/RescueModifier
      next unless spec["dir"] == ROOT

      record = JSON.parse(File.read(File.join(dir, "api.json"))) rescue next # rubocop:disable Style/RescueModifier
      record if (Process.kill(0, record["pid"]) rescue false) # rubocop:disable Style/RescueModifier
    end
  end

  def local_api
    local_apis.first
  end

  def started_machines(api)
    uri = URI("#{api["url"]}/v1/apps/flyjobs-local/machines")
    res = Net::HTTP.get(uri, { "Authorization" => "Bearer test" })
    JSON.parse(res).select { |m| m["state"] == "started" }
  rescue StandardError
    []
  end

  def worker_processes
    `ps -eo pid,args`.lines.select { |l| l.include?("fly-machine-worker") && l.include?(ROOT) }
  end

  def concurrent_requests(count, threads: 20)
    queue = Queue.new
    count.times { |i| queue << i }
    threads.times.map do
      Thread.new do
        while (i = (queue.pop(true) rescue nil)) # rubocop:disable Style/RescueModifier
          post("/echo", "tag" => @tag, "n" => i.to_s)
        end
      end
    end.each(&:join)
  end

  def run_cluster(preload:)
    start_puma(preload: preload)
    max_seen = 0
    sampler = Thread.new do
      loop do
        api = local_api
        max_seen = [max_seen, started_machines(api).count { |m| m.dig("config", "metadata", "flyjobs_queue") == "default" }].max if api
        sleep 0.2
      end
    end
    concurrent_requests(200)
    done = wait_until("200 jobs to run") { (l = lines).size >= 200 && l }
    sleep 1 # a duplicate would show up here
    ns = lines.map { |l| l["args"].first }
    assert_equal (0...200).to_a, ns.sort, "every job ran exactly once"
    assert_equal 200, done.size
    sampler.kill
    assert_operator max_seen, :<=, 2, "default queue machines never above its max_machines (2)"
    assert_operator max_seen, :>=, 1
    # One local Machines API for the whole app, however many Puma workers enqueued.
    assert_equal 1, local_apis.size
    stop_puma
  end

  def test_cluster_without_preload
    run_cluster(preload: false)
  end

  def test_cluster_with_preload
    run_cluster(preload: true)
  end

  # TERM to the Puma master while jobs run: they finish (or are released), never fail, and no
  # process is left behind. Then a restart picks up work as fast as a first start.
  def test_term_lets_running_jobs_finish_and_a_restart_is_quick
    start_puma(preload: false)
    t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    post("/echo", "tag" => @tag, "n" => "-1")
    wait_until("the first job") { lines.any? { |l| l["args"] == [-1] } }
    first_job = Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0

    5.times { post("/slow", "tag" => @tag, "seconds" => "4") }
    wait_until("5 slow jobs to start") { lines.count { |l| l["event"] == "start" } >= 5 }
    sleep 1
    stop_puma("TERM")
    wait_until("the running jobs to finish", timeout: 60) { lines.count { |l| l["event"] == "end" } >= 5 }
    ended = lines.select { |l| l["event"] == "end" }
    assert_equal 5, ended.size, "all 5 running jobs finished"
    wait_until("no worker or local API process left", timeout: 60) { worker_processes.empty? && local_api.nil? }

    # Restart: the leader lock was released at exit, so the first job runs without waiting for it.
    start_puma(preload: false)
    t1 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    post("/echo", "tag" => @tag, "n" => "-2")
    wait_until("the first job after a restart") { lines.any? { |l| l["args"] == [-2] } }
    after_restart = Process.clock_gettime(Process::CLOCK_MONOTONIC) - t1
    puts "\nfirst job: #{first_job.round(2)} s after start; #{after_restart.round(2)} s after a restart"
    assert_operator after_restart, :<, first_job + 5, "a restart must not wait out the old leader lock (10 s)"
    stop_puma
  end

  # A Puma worker killed with SIGKILL (no at_exit): its jobs and the machines are not lost.
  def test_a_killed_puma_worker_loses_nothing
    start_puma(preload: false)
    concurrent_requests(40, threads: 8)
    pids = 20.times.map { get("/pid") }.compact.uniq
    Process.kill("KILL", Integer(pids.first)) unless pids.empty?
    concurrent_requests(40, threads: 8) rescue nil # rubocop:disable Style/RescueModifier -- requests to the dying worker may fail
    wait_until("the first 40 jobs to run") { lines.map { |l| l["args"].first }.uniq.size >= 40 }
    stop_puma
  end
end
