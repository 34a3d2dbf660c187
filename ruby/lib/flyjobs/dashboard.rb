# frozen_string_literal: true

module FlyJobs
  # The web dashboard as a Rack app, for a Rails app's routes, behind the app's own auth as with
  # Sidekiq::Web:
  #
  #   # config/routes.rb
  #   authenticate :user, ->(u) { u.admin? } do
  #     mount FlyJobs::Dashboard => "/flyjobs"
  #   end
  #   # or read-only, e.g. for support staff:
  #   mount FlyJobs::Dashboard.new(read_only: true) => "/flyjobs-ro"
  #
  # The pages are rendered by the core (the same dashboard as `flyjobs dashboard`); this class
  # only hands the request over as plain data and the answer back to Rack. Changes are POSTs
  # with a CSRF token of the dashboard's own (a SameSite=Strict cookie scoped to the mount path).
  class Dashboard
    # `mount FlyJobs::Dashboard => "/flyjobs"`: the class itself is a Rack app using the
    # process-wide client ({FlyJobs.client}).
    def self.call(env)
      (@default ||= new).call(env)
    end

    # @param client [FlyJobs::Client, nil] the client to show (default: {FlyJobs.client}, looked
    #   up per request so that forked app-server workers use their own)
    # @param read_only [Boolean] show no actions and refuse every change
    def initialize(client: nil, read_only: false)
      @client = client
      @read_only = read_only ? true : false
    end

    # @param env [Hash] the Rack env
    # @return [Array(Integer, Hash, Array<String>)]
    def call(env)
      answer = (@client || FlyJobs.client).dashboard(request(env))
      headers = {}
      rack2 = rack2?
      answer.fetch("headers").each do |name, value|
        # Rack 3 requires lowercase names (the core sends those); Rack 2 code looks some up by
        # their canonical spelling (Rack::MockResponse reads "Set-Cookie").
        name = name.split("-").map(&:capitalize).join("-") if rack2
        # Rack 2 joins repeated headers (Set-Cookie) with newlines.
        headers[name] = headers.key?(name) ? "#{headers[name]}\n#{value}" : value
      end
      [answer.fetch("status"), headers, [answer.fetch("body")]]
    end

    private

    def rack2?
      defined?(::Rack::RELEASE) && ::Rack::RELEASE.to_i < 3 ? true : false
    end

    def request(env)
      input = env["rack.input"]
      # One byte past the limit, so that the core sees an oversized body and answers 413.
      body = input ? input.read(Native::DASHBOARD_MAX_BODY + 1).to_s : ""
      input&.rewind
      {
        method: env["REQUEST_METHOD"],
        # The full path, so that the core takes off the mount whatever it is called.
        path: "#{env["SCRIPT_NAME"]}#{env["PATH_INFO"]}",
        mount: env["SCRIPT_NAME"].to_s,
        query: env["QUERY_STRING"].to_s,
        headers: headers(env),
        body: body.dup.force_encoding(Encoding::UTF_8).scrub,
        read_only: @read_only
      }
    end

    # Rack keeps the request's headers in the env as HTTP_* entries, plus CONTENT_TYPE and
    # CONTENT_LENGTH without the prefix.
    def headers(env)
      env.each_with_object({}) do |(key, value), h|
        next unless value.is_a?(String)

        if key.start_with?("HTTP_")
          h[key.delete_prefix("HTTP_").downcase.tr("_", "-")] = value
        elsif key == "CONTENT_TYPE" || key == "CONTENT_LENGTH"
          h[key.downcase.tr("_", "-")] = value
        end
      end
    end
  end
end
