# frozen_string_literal: true

require_relative "../test_helper"
require "active_job"
require "active_job/queue_adapters/fly_machine_adapter"

ActiveJob::Base.logger = Logger.new(nil)

class AdapterTestJob < ActiveJob::Base
  RAN = Queue.new
  queue_as :adapter

  def perform(*args)
    RAN << [args, queue_name, priority, provider_job_id, executions]
  end
end

class AdapterRetriedJob < ActiveJob::Base
  queue_as :adapter
  flyjobs_options max_attempts: 1

  def perform
    raise IOError, "disk on fire"
  end
end

class AdapterUniqueJob < ActiveJob::Base
  queue_as :adapter
  flyjobs_options unique_key: ->(job) { "report-#{job.arguments.first}" }

  def perform(_day); end
end

class AdapterPlacedJob < ActiveJob::Base
  queue_as :adapter
  flyjobs_options machine: "performance-2x", region: %w[ams fra]

  def perform; end
end

class AdapterTest < Minitest::Test
  include FlyJobsTestHelpers

  def setup
    @client = open_client
    @adapter = ActiveJob::QueueAdapters::FlyMachineAdapter.new(client: @client)
    ActiveJob::Base.queue_adapter = @adapter
    AdapterTestJob::RAN.clear
  end

  def teardown
    @client&.close
    teardown_tmpdir
  end

  def test_rails_finds_the_adapter_by_name
    assert_equal ActiveJob::QueueAdapters::FlyMachineAdapter, ActiveJob::QueueAdapters.lookup(:fly_machine)
    if defined?(ActiveJob::QueueAdapters::AbstractAdapter)
      assert_operator ActiveJob::QueueAdapters::FlyMachineAdapter, :<, ActiveJob::QueueAdapters::AbstractAdapter
    end
  end

  def test_perform_later_sets_provider_job_id_and_stores_the_serialized_job
    job = AdapterTestJob.perform_later("hello", 42)
    assert_kind_of Integer, job.provider_job_id
    stored = @client.job(job.provider_job_id)
    assert_equal "adapter", stored["queue"]
    assert_equal "AdapterTestJob", stored["name"]
    assert_equal job.job_id, stored["payload"]["job_id"]
    assert_equal ["hello", 42], stored["payload"]["arguments"]
  end

  def test_set_queue_priority_and_wait
    before = Time.now
    job = AdapterTestJob.set(queue: "urgent", priority: 7, wait: 120).perform_later
    stored = @client.job(job.provider_job_id)
    assert_equal "urgent", stored["queue"]
    assert_equal 7, stored["priority"]
    run_at = Time.parse(stored["run_at"])
    assert_in_delta before.to_f + 120, run_at.to_f, 5
  end

  def test_enqueue_all_sets_every_provider_job_id
    jobs = [AdapterTestJob.new(1), AdapterTestJob.new(2).tap { |j| j.priority = 1 }]
    assert_equal 2, @adapter.enqueue_all(jobs)
    ids = jobs.map(&:provider_job_id)
    assert(ids.all?(Integer))
    assert_equal [[1], [2]], ids.map { |id| @client.job(id)["payload"]["arguments"] }
  end

  def test_enqueue_all_is_one_transaction
    first = AdapterTestJob.perform_later(0).provider_job_id
    jobs = [AdapterTestJob.new(1), AdapterTestJob.new(2).tap { |j| j.queue_name = "not a queue!" }]
    assert_raises(FlyJobs::InvalidError) { @adapter.enqueue_all(jobs) }
    assert_nil jobs.first.provider_job_id
    assert_nil @client.job(first + 1), "the valid job of the failed batch must not have been written"
  end

  def test_an_unserializable_argument_raises_and_writes_nothing
    first = AdapterTestJob.perform_later(1).provider_job_id
    assert_raises(ActiveJob::SerializationError) { AdapterTestJob.perform_later(Object.new) }
    second = AdapterTestJob.perform_later(2).provider_job_id
    assert_equal first + 1, second, "nothing may be written for the failed enqueue"
  end

  def test_the_worker_side_runs_the_job_through_active_job
    job = AdapterTestJob.set(priority: 3).perform_later("run me")
    @client.worker(queues: ["adapter"], wait: 1).run { |j| FlyJobs::ActiveJobSupport.perform(j) }
    args, queue, priority, provider_id, executions = AdapterTestJob::RAN.pop(true)
    assert_equal ["run me"], args
    assert_equal "adapter", queue
    assert_equal 3, priority
    assert_equal job.provider_job_id, provider_id
    assert_equal 1, executions
  end

  def test_an_exception_escaping_active_job_goes_to_the_core_retry_policy
    job = AdapterRetriedJob.perform_later
    @client.worker(queues: ["adapter"], wait: 1).run { |j| FlyJobs::ActiveJobSupport.perform(j) }
    stored = @client.job(job.provider_job_id)
    assert_equal "dead", stored["state"]
    assert_includes JSON.generate(stored), "disk on fire"
  end

  def test_a_unique_key_returns_the_pending_job
    a = AdapterUniqueJob.perform_later("monday").provider_job_id
    b = AdapterUniqueJob.perform_later("monday").provider_job_id
    c = AdapterUniqueJob.perform_later("tuesday").provider_job_id
    assert_equal a, b, "while the first is pending, the same key gives the same job"
    refute_equal a, c
  end

  def test_stopping_is_false_outside_a_worker
    refute @adapter.stopping?
  end

  def test_machine_and_region_from_the_class_and_from_set
    job = AdapterPlacedJob.perform_later
    assert_equal "performance-2x@ams,fra", @client.job(job.provider_job_id)["shape"]
    job = AdapterPlacedJob.set(machine: "shared-cpu-1x:1024", region: "iad").perform_later
    assert_equal "shared-cpu-1x:1024@iad", @client.job(job.provider_job_id)["shape"]
    job = AdapterTestJob.set(machine: "performance-4x").perform_later
    assert_equal "performance-4x", @client.job(job.provider_job_id)["shape"]
    assert_equal "", @client.job(AdapterTestJob.perform_later.provider_job_id)["shape"]
  end

  def test_a_size_fly_does_not_sell_raises_at_enqueue_and_writes_nothing
    before = @client.jobs(queue: "adapter").size
    error = assert_raises(FlyJobs::ConfigError) { AdapterTestJob.set(machine: "huge-9x").perform_later }
    assert_includes error.message, "valid sizes: shared-cpu-1x"
    assert_equal before, @client.jobs(queue: "adapter").size
  end

  def test_flyjobs_options_reject_unknown_keys
    assert_raises(ArgumentError) { Class.new(ActiveJob::Base) { flyjobs_options retries: 3 } }
    assert_equal({ max_attempts: 1 }, AdapterRetriedJob.flyjobs_options)
  end
end
