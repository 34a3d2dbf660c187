# frozen_string_literal: true

require_relative "../test_helper"

class ErrorsTest < Minitest::Test
  include FlyJobsTestHelpers

  def teardown
    teardown_tmpdir
  end

  def test_every_core_kind_has_its_own_class
    kinds = FlyJobs::Native._error_kinds
    assert_equal kinds.sort, FlyJobs::ERROR_KINDS.keys.sort, "errors.rb must declare one class per core kind"
    kinds.each do |kind|
      klass = FlyJobs.error_class_for(kind)
      refute_equal FlyJobs::Error, klass
      assert_operator klass, :<, FlyJobs::Error
      assert_operator klass, :<, StandardError
      assert_equal kind, klass::KIND
    end
  end

  VECTORS = JSON.parse(File.read(File.expand_path("../../../tests/vectors/errors.json", __dir__)))

  def view(kind, message, **fields)
    { "kind" => kind, "message" => message, "retryable" => false, "status" => nil, "request_id" => nil,
      "job_id" => nil, "causes" => [] }.merge(fields.transform_keys(&:to_s))
  end

  def test_the_mapping_picks_the_class_and_keeps_the_message
    FlyJobs::Native._error_kinds.each do |kind|
      e = FlyJobs::Native._error_for_test(JSON.generate(view(kind, "something about #{kind}")))
      assert_instance_of FlyJobs.error_class_for(kind), e
      assert_equal "something about #{kind}", e.message
      assert_equal kind, e.kind
    end
  end

  def test_the_shared_error_vectors
    assert_equal FlyJobs::Native._error_kinds, VECTORS["kinds"].map { |k| k["kind"] }
    VECTORS["kinds"].each do |k|
      assert_equal FlyJobs.const_get(k["class"]), FlyJobs.error_class_for(k["kind"])
    end
    VECTORS["cases"].each do |c|
      v = c["view"]
      e = FlyJobs::Native._error_for_test(JSON.generate(v))
      assert_instance_of FlyJobs.error_class_for(v["kind"]), e
      assert_equal [v["message"], v["retryable"], v["status"], v["request_id"], v["job_id"], v["causes"]],
                   [e.message, e.retryable?, e.status, e.request_id, e.job_id, e.causes]
    end
  end

  def test_known_names
    assert_equal "not_found", FlyJobs::NotFoundError::KIND
    assert_equal FlyJobs::ConfigError, FlyJobs.error_class_for("config")
    assert_equal FlyJobs::Error, FlyJobs.error_class_for("a_kind_from_the_future")
  end

  def test_a_bad_database_url_is_a_config_error_naming_the_setting_without_the_password
    e = assert_raises(FlyJobs::ConfigError) { FlyJobs::Client.open(database_url: "mysql://u:hunter2@db/jobs") }
    assert_includes e.message, "option database_url"
    refute_includes e.message, "hunter2"
  end

  def test_an_unknown_option_is_a_config_error
    e = assert_raises(FlyJobs::ConfigError) { FlyJobs::Client.open(no_such_option: 1) }
    assert_includes e.message, "no_such_option"
  end

  def test_a_bad_queue_name_is_invalid
    open_client do |client|
      e = assert_raises(FlyJobs::InvalidError) { client.enqueue(queue: "no spaces!", payload: {}) }
      assert_includes e.message, "no spaces!"
    end
  end

  def test_a_payload_over_the_limit_names_the_limit
    open_client(max_payload_bytes: 100) do |client|
      e = assert_raises(FlyJobs::Error) { client.enqueue(payload: { "x" => "y" * 200 }) }
      assert_includes e.message, "100"
    end
  end

  def test_a_closed_client_raises_shutdown
    client = open_client
    client.close
    client.close # idempotent
    assert_raises(FlyJobs::ShutdownError) { client.enqueue(payload: {}) }
  end
end
