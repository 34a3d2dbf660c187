# frozen_string_literal: true

Rails.application.routes.draw do
  post "/echo", to: "jobs#echo"
  post "/slow", to: "jobs#slow"
  get "/pid", to: "jobs#pid"
  # The dashboard, as the README tells users to mount it (a real app puts it behind its auth).
  mount FlyJobs::Dashboard => "/flyjobs"
end
