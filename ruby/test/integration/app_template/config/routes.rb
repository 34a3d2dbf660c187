# frozen_string_literal: true

Rails.application.routes.draw do
  post "/echo", to: "jobs#echo"
  post "/slow", to: "jobs#slow"
  get "/pid", to: "jobs#pid"
end
