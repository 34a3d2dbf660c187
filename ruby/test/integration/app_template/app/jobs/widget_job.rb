# frozen_string_literal: true

# A GlobalID argument: the worker loads the record from the app's database.
class WidgetJob < ApplicationJob
  def perform(tag, widget)
    Out.write("tag" => tag, "widget" => widget.name, "gid" => widget.to_global_id.to_s)
  end
end
