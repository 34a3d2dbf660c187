# frozen_string_literal: true

require_relative "../test_helper"
require "flyjobs/cli"

class ConfigurationTest < Minitest::Test
  def test_unset_settings_are_left_to_the_core
    assert_equal({}, FlyJobs::Configuration.new.to_options)
  end

  def test_merge_takes_yaml_style_hashes
    c = FlyJobs::Configuration.new
    c.merge!("database_url" => "sqlite://x.db", queues: { mail: { "max_machines" => 2, wait: "forever" } })
    assert_equal({ database_url: "sqlite://x.db", queues: { "mail" => { "max_machines" => 2, wait: "forever" } } }, c.to_options)
    c.merge!(queues: { "*" => { pool: "suspend" } })
    assert_equal %w[mail *], c.to_options[:queues].keys
  end

  def test_unknown_settings_are_rejected
    assert_raises(FlyJobs::ConfigError) { FlyJobs::Configuration.new.merge!(databse_url: "x") }
    c = FlyJobs::Configuration.new
    c.queues = { "a" => { max_machine: 1 } }
    e = assert_raises(FlyJobs::ConfigError) { FlyJobs::Client.open(**c.to_options) }
    assert_includes e.message, "queues.a: unknown queue setting \"max_machine\""
  end

  def test_bad_worker_settings_print_usage_not_a_backtrace
    Dir.mktmpdir do |dir|
      FileUtils.mkdir_p(File.join(dir, "config"))
      File.write(File.join(dir, "config", "environment.rb"), "# an app that boots\n")
      env = { "FLYJOBS_DATABASE_URL" => "sqlite://#{dir}/q.db", "FLYJOBS_WORKER_QUEUES" => "bad queue!" }
      out, err = capture_subprocess_io do
        system(env, RbConfig.ruby, File.expand_path("../../bin/fly-machine-worker", __dir__), "--app", dir, "--wait", "0")
      end
      assert_equal 64, $?.exitstatus, out + err
      assert_includes err, "FLYJOBS_WORKER_QUEUES"
      assert_includes err, "Usage: fly-machine-worker"
      refute_match(/\.rb:\d+:in /, err)
    end
  end

  def test_worker_processes_never_start_the_scaler
    old = ENV["FLYJOBS_WORKER"]
    ENV["FLYJOBS_WORKER"] = "1"
    refute FlyJobs.start_scaler?
    ENV.delete("FLYJOBS_WORKER")
    assert FlyJobs.start_scaler?
  ensure
    old ? ENV["FLYJOBS_WORKER"] = old : ENV.delete("FLYJOBS_WORKER")
  end

  def test_cli_options
    cli = FlyJobs::CLI.new(%w[--queues a,b --wait forever --concurrency 3 --app /tmp])
    assert_equal %w[a b], cli.queues
    assert_equal "forever", cli.wait
    assert_equal 3, cli.concurrency
    assert_equal "/tmp", cli.app_dir
    assert_raises(OptionParser::InvalidArgument) { FlyJobs::CLI.new(%w[--concurrency many]) }
  end

  def test_the_worker_refuses_a_directory_without_a_rails_app
    Dir.mktmpdir do |dir|
      out, err = capture_subprocess_io do
        system(RbConfig.ruby, File.expand_path("../../bin/fly-machine-worker", __dir__), "--app", dir)
      end
      assert_equal 64, $?.exitstatus, out + err
      assert_includes err, "config/environment.rb is missing"
    end
  end
end
