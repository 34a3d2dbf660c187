# frozen_string_literal: true

# Reports what Active Job restored in the worker: queue, priority, locale, time zone, ids.
class EchoJob < ApplicationJob
  def perform(tag, *args)
    Out.write("tag" => tag, "args" => args, "queue" => queue_name, "priority" => priority,
              "executions" => executions, "provider_job_id" => provider_job_id, "job_id" => job_id,
              "locale" => I18n.locale.to_s, "zone" => Time.zone&.name)
  end
end
