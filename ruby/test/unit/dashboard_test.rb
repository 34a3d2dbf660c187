# frozen_string_literal: true

require "stringio"
require_relative "../test_helper"

# FlyJobs::Dashboard as Rails mounts it: a Rack app called with a Rack env whose SCRIPT_NAME is
# the mount path. The pages come from the core; these tests check the hand-over both ways.
class DashboardTest < Minitest::Test
  include FlyJobsTestHelpers

  def setup
    @client = open_client
    @app = FlyJobs::Dashboard.new(client: @client)
  end

  def teardown
    @client&.close
    teardown_tmpdir
  end

  def env(method, path, body: "", cookie: nil, query: "")
    {
      "REQUEST_METHOD" => method, "SCRIPT_NAME" => "/flyjobs", "PATH_INFO" => path,
      "QUERY_STRING" => query, "HTTP_HOST" => "app.test", "rack.input" => StringIO.new(body),
      "CONTENT_TYPE" => "application/x-www-form-urlencoded", "HTTP_COOKIE" => cookie
    }.compact
  end

  def dead_job
    id = @client.enqueue(queue: q("dash"), payload: { "html" => "<script>alert(1)</script>" }, max_attempts: 1)
    @client.worker(queues: [q("dash")], wait: 1).run { |_job| raise ArgumentError, "<b>bad</b>" }
    assert_equal "dead", @client.job(id)["state"]
    id
  end

  def test_pages_render_under_the_mount_path_with_markup_escaped
    id = dead_job
    status, headers, body = @app.call(env("GET", "/jobs/#{id}"))
    assert_equal 200, status
    assert_match %r{\Atext/html}, headers["content-type"]
    html = body.join
    assert_includes html, 'href="/flyjobs/dead"'
    assert_includes html, "&lt;script&gt;alert(1)&lt;/script&gt;"
    refute_includes html, "<script>alert"
    refute_includes html, "<b>bad</b>"
    assert_includes headers["set-cookie"], "Path=/flyjobs; HttpOnly; SameSite=Strict"
    status, = @app.call(env("GET", "/nope"))
    assert_equal 404, status
  end

  def test_an_oversized_body_is_refused_by_the_core_and_a_mount_named_like_a_page_works
    app = FlyJobs::Dashboard.new(client: @client)
    big = "x" * (FlyJobs::Native::DASHBOARD_MAX_BODY + 10)
    status, _, body = app.call(env("POST", "/dead/retry_all", body: big))
    assert_equal 413, status, body.join
    # Mounted at /jobs, a job's page is /jobs/jobs/ID: the full path keeps it unambiguous.
    id = dead_job
    status, _, body = app.call(env("GET", "/jobs/#{id}").merge("SCRIPT_NAME" => "/jobs"))
    assert_equal 200, status, body.join
    assert_includes body.join, 'href="/jobs/dead"'
  end

  def test_a_retry_needs_the_csrf_token_then_moves_the_job_to_ready
    id = dead_job
    _, headers, = @app.call(env("GET", "/dead"))
    token = headers["set-cookie"][/flyjobs_csrf=(\h+)/, 1]
    cookie = "flyjobs_csrf=#{token}"
    status, = @app.call(env("POST", "/jobs/#{id}/retry", body: "_csrf=#{"0" * 64}", cookie: cookie))
    assert_equal 403, status
    assert_equal "dead", @client.job(id)["state"]
    status, headers, = @app.call(env("POST", "/jobs/#{id}/retry", body: "_csrf=#{token}&return_to=%2Fflyjobs%2Fdead",
                                                                 cookie: cookie))
    assert_equal 303, status
    assert_equal "/flyjobs/dead", headers["location"]
    assert_equal "ready", @client.job(id)["state"]
  end

  def test_read_only_refuses_changes
    id = dead_job
    app = FlyJobs::Dashboard.new(client: @client, read_only: true)
    _, headers, body = app.call(env("GET", "/dead"))
    refute_includes body.join, 'method="post"'
    token = headers["set-cookie"][/flyjobs_csrf=(\h+)/, 1]
    status, = app.call(env("POST", "/jobs/#{id}/retry", body: "_csrf=#{token}", cookie: "flyjobs_csrf=#{token}"))
    assert_equal 403, status
    assert_equal "dead", @client.job(id)["state"]
  end
end
