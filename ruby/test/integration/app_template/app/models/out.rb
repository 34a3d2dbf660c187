# frozen_string_literal: true

# Jobs report what they saw as JSON lines in tmp/out.jsonl; the test process reads them.
class Out
  FILE = Rails.root.join("tmp", "out.jsonl")

  def self.write(record)
    line = JSON.generate(record.merge("pid" => Process.pid, "at" => Time.now.to_f,
                                      "machine" => ENV["FLY_MACHINE_ID"]))
    File.open(FILE, "a") do |f|
      f.flock(File::LOCK_EX)
      f.puts(line)
    end
  end

  def self.read
    return [] unless File.exist?(FILE)

    File.readlines(FILE).map { |l| JSON.parse(l) }
  end
end
