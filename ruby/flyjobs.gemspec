# frozen_string_literal: true

require_relative "lib/flyjobs/version"

Gem::Specification.new do |s|
  s.name = "flyjobs"
  s.version = FlyJobs::VERSION
  s.summary = "Background jobs on on-demand Fly Machines, with a true Active Job adapter (:fly_machine)"
  s.description = "A Rust core (durable queue, retries, scaler, worker loop) with an Active Job adapter: " \
                  "perform_later writes to a queue, and worker machines are booted on demand, drain it and go away."
  s.authors = ["flyjobs"]
  s.license = "MIT"
  s.homepage = "https://github.com/flyjobs/flyjobs"
  s.required_ruby_version = ">= 3.0"

  # The native half is a Rust crate (bindings/ruby) over the core (core/, emulator/). For a source
  # gem, `rake vendor` copies them under ext/flyjobs/rust; ext/flyjobs/extconf.rb runs cargo.
  s.files = Dir["lib/**/*.rb", "lib/generators/**/*", "bin/*", "ext/flyjobs/extconf.rb",
                "ext/flyjobs/rust/**/*", "README.md", "flyjobs.gemspec"]
  s.bindir = "bin"
  s.executables = ["fly-machine-worker"]
  s.require_paths = ["lib"]
  s.extensions = ["ext/flyjobs/extconf.rb"]

  # Works with Active Job 6.1 (Debian bookworm) and newer; AbstractAdapter is used where defined.
  s.add_dependency "activejob", ">= 6.1"
end
