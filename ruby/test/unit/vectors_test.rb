# frozen_string_literal: true

require_relative "../test_helper"

# The shared vectors of tests/vectors/ (also run by the Rust tests and every other binding).
class VectorsTest < Minitest::Test
  def vectors(name)
    JSON.parse(File.read(File.expand_path("../../../tests/vectors/#{name}", __dir__)))
  end

  # A JSON pointer into a Hash (RFC 6901, enough of it for the vectors).
  def dig(doc, pointer)
    pointer.split("/").drop(1).reduce(doc) { |d, key| d.is_a?(Hash) ? d[key.gsub("~1", "/").gsub("~0", "~")] : nil }
  end

  def test_options
    cases = vectors("options.json")["cases"]
    assert_operator cases.size, :>=, 20
    cases.each do |c|
      if c["expect"]
        got = JSON.parse(FlyJobs::Native._resolve_config(JSON.generate(c["options"]), JSON.generate(c["env"])))
        c["expect"].each { |pointer, want| assert_equal want, dig(got, pointer), "#{c["name"]}: #{pointer}" }
      else
        e = assert_raises(FlyJobs::Error, c["name"]) do
          FlyJobs::Native._resolve_config(JSON.generate(c["options"]), JSON.generate(c["env"]))
        end
        assert_equal c["error"]["kind"], e.kind, c["name"]
        c["error"]["contains"].each { |needle| assert_includes e.message, needle, c["name"] }
      end
    end
  end

  # The same settings through the gem's own front door: FlyJobs::Configuration -> Client.open.
  def test_configuration_passes_queue_settings_with_pool_and_star
    Dir.mktmpdir do |dir|
      c = FlyJobs::Configuration.new
      c.merge!(database_url: "sqlite://#{dir}/q.db", queues: { "*" => { concurrency: 3 }, mail: { pool: :suspend, wait: :forever } })
      FlyJobs::Client.open(**c.to_options) { |client| assert_equal 20, client.config["max_machines"] }
      got = JSON.parse(FlyJobs::Native._resolve_config(FlyJobs.to_json(c.to_options), "{}"))
      assert_equal 3, got.dig("queues", "mail", "concurrency")
      assert_equal "suspend", got.dig("queues", "mail", "pool")
      assert_equal "forever", got.dig("queues", "mail", "wait")
    end
  end

  def test_outcomes
    vectors("outcomes.json")["cases"].each do |c|
      assert_includes %w[retry dead discard], c["outcome"]["outcome"]
    end
  end

  def test_the_gem_has_an_accessor_for_every_core_option
    names = FlyJobs.option_specs["options"].map { |s| s["name"].to_sym }
    assert_equal names, FlyJobs::Configuration::OPTIONS
    c = FlyJobs::Configuration.new
    names.each { |n| assert_respond_to c, :"#{n}=" }
  end
end
