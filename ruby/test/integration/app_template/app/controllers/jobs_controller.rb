# frozen_string_literal: true

# What the Puma test requests: each request enqueues one job from a server process.
class JobsController < ActionController::API
  def echo
    EchoJob.perform_later(params.require(:tag), Integer(params.require(:n)))
    head :ok
  end

  def slow
    SlowJob.set(queue: "slow").perform_later(params.require(:tag), Float(params.require(:seconds)))
    head :ok
  end

  def pid
    render plain: Process.pid.to_s
  end
end
