# frozen_string_literal: true

require "fileutils"
require "open3"
require "rbconfig"

# The Rails app the integration tests run: generated with Debian's `rails new` (offline, no
# bundle install) into test/tmp/app, then `rails generate flyjobs:install` (the generator under
# test), then the files of app_template/ (jobs, a model, test settings) on top.
module RailsApp
  GEM_ROOT = File.expand_path("../..", __dir__)
  ROOT = File.join(GEM_ROOT, "test", "tmp", "app")
  TEMPLATE = File.expand_path("app_template", __dir__)

  RAILS_NEW_FLAGS = %w[
    --skip-bundle --skip-git --skip-webpack-install --skip-javascript --skip-action-cable
    --skip-action-mailbox --skip-action-text --skip-active-storage --skip-sprockets --skip-spring
    --skip-listen --skip-bootsnap --skip-test --skip-system-test --skip-action-mailer --skip-puma
    --skip-jbuilder --database=sqlite3
  ].freeze

  module_function

  def generate!
    FileUtils.rm_rf(ROOT)
    FileUtils.mkdir_p(File.dirname(ROOT))
    run!("rails", "new", ROOT, *RAILS_NEW_FLAGS, chdir: File.dirname(ROOT))
    # Only what the app uses, all of it from Debian packages: bundler resolves it offline.
    File.write(File.join(ROOT, "Gemfile"), <<~RUBY)
      source "https://rubygems.org"
      gem "rails"
      gem "sqlite3"
      gem "flyjobs", path: #{GEM_ROOT.inspect}
    RUBY
    run!(File.join(ROOT, "bin", "rails"), "generate", "flyjobs:install")
    FileUtils.cp_r("#{TEMPLATE}/.", ROOT)
    run!(File.join(ROOT, "bin", "rails"), "db:schema:load")
    ROOT
  end

  def run!(*cmd, chdir: ROOT)
    env = { "RAILS_ENV" => "development", "BUNDLE_GEMFILE" => nil }
    out, status = Open3.capture2e(env, *cmd, chdir: chdir)
    raise "#{cmd.join(" ")} failed (#{status}):\n#{out}" unless status.success?

    out
  end
end
