# frozen_string_literal: true

# The Ruby job of the cross-language test (a plain FlyJobs job, no Rails), its worker and tool:
#   ruby poly_rb.rb enqueue TOKEN | admin | work
# admin prints one JSON line: the jobs and stats this language's client sees.
require "json"
require "flyjobs"

QUEUE = "poly-rb"

def perform(job)
  File.open("out.jsonl", "a") do |f|
    f.puts JSON.generate("lang" => "ruby", "token" => job.payload.fetch("token"), "pid" => Process.pid, "id" => job.id)
  end
end

FlyJobs::Client.open do |client| # FLYJOBS_DATABASE_URL
  case ARGV.fetch(0)
  when "enqueue"
    id = client.enqueue(payload: { "token" => ARGV.fetch(1) }, queue: QUEUE, name: "PolyRb")
    puts JSON.generate("id" => id)
  when "admin"
    puts JSON.generate("jobs" => client.jobs(limit: 1000), "stats" => client.stats)
  when "work"
    worker = client.worker(queues: [QUEUE], wait: 3)
    %w[TERM INT].each { |s| trap(s) { worker.quiet } }
    worker.run { |job| perform(job) }
  end
end
