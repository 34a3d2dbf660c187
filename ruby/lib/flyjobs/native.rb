# frozen_string_literal: true

# Loads the native half of the gem (bindings/ruby, built by cargo into lib/flyjobs_ruby.so by
# ext/flyjobs/extconf.rb or scripts/test-ruby.sh). It defines FlyJobs::Native::{Client, Worker,
# Slot, Lease} with positional `_name` methods; the public API with keyword arguments lives in
# lib/flyjobs/client.rb and lib/flyjobs/worker.rb.
begin
  require "flyjobs_ruby"
rescue LoadError => e
  raise LoadError, "flyjobs: the native extension flyjobs_ruby.so is not built (#{e.message}). " \
                   "Install the gem from source with Rust present (`gem install flyjobs`), or run " \
                   "`cargo build -p flyjobs-ruby` and copy target/*/libflyjobs_ruby.so to ruby/lib/flyjobs_ruby.so."
end
