(ns inventory.main
  "A small Ring service on Jetty: the Clojure example deployable for shipjar.

  Configuration is read once at start from $SHIPJAR_CONFIG_DIR (or ./config):
  service.properties and database.properties. Logging is logback through
  clojure.tools.logging; the deployed config comes in with
  -Dlogback.configurationFile, the jar carries a console-only default.
  Environment variables select the listen address and a few fault knobs used
  by shipjar's tests (the same as examples/hello's)."
  (:require [clojure.data.json :as json]
            [clojure.java.io :as io]
            [clojure.string :as str]
            [clojure.tools.logging :as log]
            [ring.adapter.jetty :as jetty]
            [ring.middleware.params :refer [wrap-params]])
  (:import (java.io File)
           (java.util Locale Properties)
           (java.util.concurrent Executors ScheduledExecutorService ThreadFactory TimeUnit)
           (org.eclipse.jetty.server Server)
           (org.eclipse.jetty.server.handler StatisticsHandler))
  (:gen-class))

(def ^:private max-slow-ms 600000)

(def ^:private stop-grace-ms
  "How long a graceful stop waits for in-flight requests."
  10000)

;; ---------------------------------------------------------------- environment

(defn- env-or [name fallback]
  (let [v (System/getenv name)]
    (if (str/blank? v) fallback v)))

(defn- die
  "Prints to stderr (not through logging: it must show even when logging is
  misconfigured) and exits."
  [code msg]
  (binding [*out* *err*]
    (println (str "inventory: " msg))
    (flush))
  (System/exit code))

(defn- int-env [name fallback]
  (let [v (env-or name nil)
        n (when v (try (Long/parseLong (str/trim v)) (catch NumberFormatException _ nil)))]
    (cond
      (nil? v) fallback
      (and n (<= 0 n Integer/MAX_VALUE)) n
      :else (die 2 (str name " must be a non-negative integer, got '" v "'")))))

(defn- flag?
  "A knob is on when set to 1, true or yes."
  [name]
  (contains? #{"1" "true" "yes"} (.toLowerCase (str/trim (env-or name "")) Locale/ROOT)))

(defn- config-dir ^File []
  (io/file (env-or "SHIPJAR_CONFIG_DIR" "config")))

(defn- read-properties
  "Reads a properties file as UTF-8 (what shipjar's renderer writes) into a
  sorted map; a missing file means no settings, an unreadable one stops the start."
  [^File file]
  (let [props (Properties.)]
    (if (.exists file)
      (with-open [in (io/reader file :encoding "UTF-8")]
        (.load props in))
      (log/info (str file) "not found, using no settings from it"))
    (into (sorted-map) (map (fn [k] [k (.getProperty props k)])) (.stringPropertyNames props))))

(defn- timer-pool ^ScheduledExecutorService []
  (Executors/newSingleThreadScheduledExecutor
   (reify ThreadFactory
     (newThread [_ r]
       (doto (Thread. ^Runnable r "inventory-timer")
         (.setDaemon true))))))

;; ---------------------------------------------------------------- HTTP

(defn- text [status body]
  {:status status
   :headers {"Content-Type" "text/plain; charset=utf-8"}
   :body body})

(defn- json-ok [m]
  {:status 200
   :headers {"Content-Type" "application/json"}
   :body (str (json/write-str m :escape-slash false) "\n")})

(defn- slow [params]
  (let [ms (try (Long/parseLong (str (get params "ms"))) (catch NumberFormatException _ -1))]
    (if (<= 0 ms max-slow-ms)
      (try
        (Thread/sleep ms)
        (text 200 (str "slept " ms " ms\n"))
        (catch InterruptedException _
          (.interrupt (Thread/currentThread))
          (text 503 "interrupted\n")))
      (text 400 (str "usage: /slow?ms=N with 0 <= N <= " max-slow-ms "\n")))))

(defn- database-view
  "The database settings shown over HTTP. The password itself must never
  leave the process: only whether it is set, and its length."
  [database]
  (let [password (get database "password" "")]
    {"db_url" (get database "url" "")
     "db_user" (get database "user" "")
     "db_password_set" (not (str/blank? password))
     "db_password_length" (count password)}))

(def ^:private known-paths #{"/" "/health" "/version" "/config" "/slow"})

(defn- routes
  "The service's Ring handler; `ready` is an atom that is true once start-up
  work is done."
  [{:keys [service database version ready]}]
  (fn [{:keys [request-method uri params]}]
    (cond
      (not (known-paths uri)) (text 404 "not found\n")
      (not= :get request-method) (assoc-in (text 405 "method not allowed\n") [:headers "Allow"] "GET")
      :else (case uri
              "/" (text 200 (str "inventory " version "\n"))
              "/health" (if @ready (text 200 "ok\n") (text 503 "starting\n"))
              "/version" (json-ok (merge {"version" "unknown"} service))
              "/config" (json-ok (database-view database))
              "/slow" (slow params)))))

(defn- wrap-errors-and-log
  "Answers 500 on an exception, and logs each request at debug level."
  [handler]
  (fn [{:keys [request-method uri] :as request}]
    (let [t0 (System/nanoTime)
          response (try
                     (handler request)
                     (catch Exception e
                       (log/warn e "error handling" (name request-method) uri)
                       (text 500 "internal error\n")))]
      (log/debug (str/upper-case (name request-method)) uri "->" (:status response)
                 (str "(" (quot (- (System/nanoTime) t0) 1000000) " ms)"))
      response)))

(defn- graceful
  "Jetty configurator: a StatisticsHandler around the app lets Server.stop
  close the listener first and then wait for requests in flight."
  [^Server server]
  (let [stats (StatisticsHandler.)]
    (.setHandler stats (.getHandler server))
    (.setHandler server stats)
    (.setStopTimeout server stop-grace-ms)))

;; ---------------------------------------------------------------- life cycle

(defn- ignore-sigterm! []
  ;; Replaces the JVM's own TERM handler, so shutdown hooks no longer run on SIGTERM.
  (sun.misc.Signal/handle (sun.misc.Signal. "TERM")
                          (reify sun.misc.SignalHandler
                            (handle [_ _] (log/warn "ignoring SIGTERM"))))
  (log/warn "IGNORE_SIGTERM is set: only SIGKILL will stop this process"))

(defn- start-server ^Server [handler bind port]
  (try
    (jetty/run-jetty handler {:host bind
                              :port port
                              :join? false
                              :min-threads 2
                              :max-threads 16
                              :configurator graceful})
    (catch java.io.IOException e ; port in use, bad BIND
      (die 1 (str "cannot listen on " bind ":" port ": " (.getMessage e))))
    (catch IllegalArgumentException e ; port out of range
      (die 1 (str "cannot listen on " bind ":" port ": " (.getMessage e))))))

(defn- stop!
  "Runs from the JVM shutdown hook (SIGTERM, SIGINT, System/exit)."
  [^Server server ready ^ScheduledExecutorService timers]
  (log/info "stopping: waiting up to" (quot stop-grace-ms 1000) "s for in-flight requests")
  (reset! ready false)
  (.shutdownNow timers)
  (try
    (.stop server)
    (catch Exception e
      (log/warn e "stopping Jetty")))
  (log/info "stopped"))

(defn -main
  "Starts the service and returns; Jetty's threads keep the JVM alive."
  [& _args]
  (let [dir (config-dir)
        service (read-properties (io/file dir "service.properties"))
        database (read-properties (io/file dir "database.properties"))
        version (get service "version" "unknown")
        bind (env-or "BIND" "127.0.0.1")
        port (int-env "PORT" 8080)
        startup-delay-ms (int-env "STARTUP_DELAY_MS" 0)
        crash-after-s (int-env "CRASH_AFTER_S" 0)
        ready (atom false)
        timers (timer-pool)]
    (log/info "starting inventory version" version "on" (str bind ":" port))
    (when (flag? "FAIL_ON_START")
      (die 1 "FAIL_ON_START is set, exiting"))
    (when (flag? "IGNORE_SIGTERM")
      (ignore-sigterm!))
    (let [app (-> (routes {:service service :database database :version version :ready ready})
                  wrap-params
                  wrap-errors-and-log)
          server (start-server app bind port)
          mark-ready (fn []
                       (reset! ready true)
                       (log/info "start-up complete, healthy")
                       (when (pos? crash-after-s)
                         (.schedule timers
                                    ^Runnable (fn []
                                                (binding [*out* *err*]
                                                  (println (str "inventory: crashing on purpose (CRASH_AFTER_S="
                                                                crash-after-s ")"))
                                                  (flush))
                                                ;; No shutdown hooks: simulates a hard crash.
                                                (.halt (Runtime/getRuntime) 3))
                                    (long crash-after-s) TimeUnit/SECONDS)))]
      (.addShutdownHook (Runtime/getRuntime)
                        (Thread. ^Runnable (fn [] (stop! server ready timers)) "inventory-shutdown"))
      ;; Log the real port: with PORT=0 the OS picks it.
      (log/info "listening on" (str bind ":" (.getLocalPort ^org.eclipse.jetty.server.ServerConnector
                                                            (first (.getConnectors server)))))
      (cond
        (flag? "HANG_ON_START")
        (log/warn "HANG_ON_START is set: start-up never completes, /health stays 503")

        (pos? startup-delay-ms)
        (do (log/info (str "STARTUP_DELAY_MS=" startup-delay-ms ": /health returns 503 until then"))
            (.schedule timers ^Runnable mark-ready (long startup-delay-ms) TimeUnit/MILLISECONDS))

        :else (mark-ready)))))
