# frozen_string_literal: true

# Builds the native extension with cargo; no rb_sys gem, no rake-compiler (RubyGems may be
# unreachable, and plain cargo is all it takes: see shared/reference/toolchain.md §2).
#
# RubyGems runs this from ext/flyjobs and then `make` + `make install`. We build the crate
# flyjobs-ruby here and write a Makefile whose targets copy the .so into lib/, where
# lib/flyjobs/native.rb requires it as "flyjobs_ruby".
require "fileutils"
require "rbconfig"

ext_dir = __dir__
gem_root = File.expand_path("../..", ext_dir)
# In the repository: the workspace is two levels up (ruby/ext/flyjobs -> ruby -> repo root).
# In a source gem: `rake vendor` put the crates under ext/flyjobs/rust.
workspace = [File.expand_path("../..", gem_root), File.join(ext_dir, "rust")].find do |dir|
  File.exist?(File.join(dir, "bindings", "ruby", "Cargo.toml"))
end
abort "flyjobs: cannot find the Rust sources (bindings/ruby/Cargo.toml)" unless workspace

cargo = ENV.fetch("CARGO", "cargo")
unless system(cargo, "--version", out: File::NULL, err: File::NULL)
  abort "flyjobs: cargo not found; install Rust (https://rustup.rs) to build the native extension"
end

profile = ENV["FLYJOBS_CARGO_PROFILE"] || "release"
target_dir = ENV["CARGO_TARGET_DIR"] || File.join(workspace, "target")
args = [cargo, "build", "--manifest-path", File.join(workspace, "bindings", "ruby", "Cargo.toml"),
        "-p", "flyjobs-ruby", "--target-dir", target_dir]
args << "--release" if profile == "release"
# The repository's lock file is exact; a vendored copy has fewer members, so cargo may trim it.
args << "--locked" unless workspace.start_with?(ext_dir)
# rb-sys reads RbConfig from the `ruby` it runs: make it this one.
env = { "RUBY" => RbConfig.ruby }
puts "flyjobs: #{args.join(" ")}"
system(env, *args) || abort("flyjobs: cargo build failed")

dlext = RbConfig::CONFIG["DLEXT"]
built = File.join(target_dir, profile == "release" ? "release" : "debug",
                  RbConfig::CONFIG["host_os"].match?(/darwin/) ? "libflyjobs_ruby.dylib" : "libflyjobs_ruby.so")
abort "flyjobs: #{built} was not produced" unless File.exist?(built)
FileUtils.cp(built, File.join(gem_root, "lib", "flyjobs_ruby.#{dlext}"))
FileUtils.cp(built, File.join(ext_dir, "flyjobs_ruby.#{dlext}"))

# RubyGems runs `make` and `make install` (DESTDIR/sitearchdir given); the .so is already in
# lib/, which is on the gem's require path, so install only copies it where asked.
File.write(File.join(ext_dir, "Makefile"), <<~MAKE)
  SRC = flyjobs_ruby.#{dlext}
  all:
  \t@true
  install:
  \t@if [ -n "$(sitearchdir)" ]; then mkdir -p "$(DESTDIR)$(sitearchdir)" && cp $(SRC) "$(DESTDIR)$(sitearchdir)/"; fi
  clean:
  \t@rm -f $(SRC)
MAKE
