// The dashboard's one script: keeps the pages live through the event stream (/api/v1/events) and sends
// the operator's actions to the JSON API with the session's CSRF token. It is a file, not an inline
// script, and binds its handlers here rather than in attributes, so every page keeps a strict CSP.
(function () {
  "use strict";

  var API = "/api/v1";
  var EVENT_TYPES = [
    "agent.registered", "agent.updated", "agent.status_changed", "agent.offline", "agent.deleted",
    "assignment.created", "assignment.assigned", "assignment.status_changed"
  ];
  var OPEN = ["pending", "assigned", "accepted", "in_progress"];
  // Load and heartbeat times change without events: the lists are fetched again this often.
  var RESYNC_MS = 15000;
  var MAX_RETRY_MS = 30000;

  var body = document.body;
  var csrfMeta = document.querySelector('meta[name="csrf-token"]');
  var csrfToken = csrfMeta ? csrfMeta.content : "";
  var agentsTable = document.getElementById("agents");
  var assignmentsTable = document.getElementById("assignments");
  var summary = document.getElementById("summary");
  var live = document.getElementById("live");
  var flash = document.getElementById("flash");
  var agentNames = {};

  // -- the JSON API -----------------------------------------------------------------------------------

  function api(method, path, payload) {
    var headers = { Accept: "application/json" };
    var init = { method: method, headers: headers, credentials: "same-origin" };
    if (method !== "GET") {
      headers["X-CSRF-Token"] = csrfToken;
    }
    if (payload !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    return fetch(API + path, init).then(function (response) {
      if (response.status === 401) {
        window.location.assign(body.dataset.loginUrl);
        throw new Error("Signed out.");
      }
      return response.json().then(function (json) {
        if (!response.ok) {
          throw new Error((json.error && json.error.message) || response.statusText);
        }
        return json;
      });
    });
  }

  function say(message) {
    flash.textContent = message;
    flash.hidden = !message;
  }

  function act(button, promise) {
    button.disabled = true;
    say("");
    promise.catch(function (error) { say(error.message); }).then(function () { button.disabled = false; });
  }

  // -- rendering --------------------------------------------------------------------------------------

  function field(row, name) {
    return row.querySelector('[data-field="' + name + '"]');
  }

  function ago(ms) {
    var seconds = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (seconds < 60) { return seconds + " s ago"; }
    if (seconds < 3600) { return Math.floor(seconds / 60) + " min ago"; }
    return new Date(ms).toLocaleString();
  }

  function showTime(element, iso) {
    if (!iso) { return; }
    element.setAttribute("datetime", iso);
    var ms = Date.parse(iso);
    element.textContent = element.hasAttribute("data-relative") ? ago(ms) : new Date(ms).toLocaleString();
  }

  function showAllTimes() {
    document.querySelectorAll("time[datetime]").forEach(function (element) {
      showTime(element, element.getAttribute("datetime"));
    });
  }

  function showEmpty(table) {
    var note = document.querySelector('[data-empty-for="' + table.id + '"]');
    if (note) { note.hidden = table.tBodies[0].rows.length > 0; }
  }

  // The row with this id, made from the page's <template> when it is new. Agents are kept in name order,
  // assignments newest first.
  function rowFor(table, key, id, templateId, sortName) {
    var rows = table.tBodies[0];
    var row = rows.querySelector("tr[data-" + key + '="' + id + '"]');
    if (row) { return row; }
    row = document.getElementById(templateId).content.firstElementChild.cloneNode(true);
    row.setAttribute("data-" + key, id);
    var before = null;
    if (sortName !== undefined) {
      before = Array.prototype.find.call(rows.rows, function (other) {
        return field(other, "name").textContent.toLowerCase() > sortName.toLowerCase();
      }) || null;
    } else {
      before = rows.firstElementChild;
    }
    rows.insertBefore(row, before);
    showEmpty(table);
    return row;
  }

  function removeRow(table, key, id) {
    var row = table.tBodies[0].querySelector("tr[data-" + key + '="' + id + '"]');
    if (row) { row.remove(); }
    showEmpty(table);
  }

  // An event's copy of the agent has no load and may have an older heartbeat time than the row: keep
  // the row's (`fromEvent`).
  function showAgent(agent, fromEvent) {
    agentNames[agent.id] = agent.name;
    if (!agentsTable) { return; }
    var row = rowFor(agentsTable, "agent-id", agent.id, "agent-row", agent.name);
    row.dataset.mode = agent.mode;
    field(row, "name").textContent = agent.name;
    var status = field(row, "status");
    status.textContent = agent.status;
    status.dataset.status = agent.status;
    if (!(fromEvent && agent.load === null)) {
      field(row, "load").textContent = agent.load === null ? "–" : agent.load.toFixed(2);
    }
    var beat = field(row, "last_heartbeat_at");
    var shown = Date.parse(beat.getAttribute("datetime") || "") || 0;
    if (agent.last_heartbeat_at && Date.parse(agent.last_heartbeat_at) >= shown) {
      showTime(beat, agent.last_heartbeat_at);
    }
    field(row, "work").textContent = agent.open_assignments + " / " + agent.max_concurrent;
    var toggle = row.querySelector('[data-action="toggle-mode"]');
    if (toggle) { toggle.textContent = agent.mode === "active" ? "Pause" : "Resume"; }
  }

  function forgetAgent(id) {
    delete agentNames[id];
    if (agentsTable) { removeRow(agentsTable, "agent-id", id); }
  }

  function showAssignment(assignment) {
    if (!assignmentsTable) { return; }
    var row = rowFor(assignmentsTable, "assignment-id", assignment.id, "assignment-row");
    row.dataset.open = OPEN.indexOf(assignment.status) >= 0 ? "true" : "false";
    field(row, "title").textContent = assignment.title;
    var status = field(row, "status");
    status.textContent = assignment.status;
    status.dataset.status = assignment.status;
    var agent = field(row, "agent");
    agent.dataset.agentId = assignment.agent_id || "";
    agent.textContent = assignment.agent_id ? agentNames[assignment.agent_id] || assignment.agent_id : "–";
    field(row, "priority").textContent = assignment.priority;
    showTime(field(row, "created_at"), assignment.created_at);
  }

  function showAgentOptions() {
    var ids = Object.keys(agentNames).sort(function (a, b) {
      return agentNames[a].localeCompare(agentNames[b]);
    });
    document.querySelectorAll("select[data-agent-options]").forEach(function (select) {
      var chosen = select.value;
      while (select.options.length > 1) { select.remove(1); }
      ids.forEach(function (id) { select.add(new Option(agentNames[id], id, false, id === chosen)); });
    });
    if (assignmentsTable) {
      assignmentsTable.querySelectorAll('[data-field="agent"]').forEach(function (cell) {
        var id = cell.dataset.agentId;
        if (id && agentNames[id]) { cell.textContent = agentNames[id]; }
      });
    }
  }

  function showBreakdown(list, counts) {
    while (list.firstChild) { list.removeChild(list.firstChild); }
    Object.keys(counts).sort().forEach(function (name) {
      var term = document.createElement("dt");
      var value = document.createElement("dd");
      term.textContent = name;
      value.textContent = counts[name];
      list.append(term, value);
    });
  }

  function showSummary(data) {
    summary.querySelector('[data-summary="total_agents"]').textContent = data.total_agents;
    summary.querySelector('[data-summary="open_assignments"]').textContent = data.open_assignments;
    showBreakdown(summary.querySelector('[data-summary-breakdown="agents"]'), data.agents);
    showBreakdown(summary.querySelector('[data-summary-breakdown="assignments"]'), data.assignments);
  }

  var summaryTimer = null;

  function refreshSummarySoon() {
    if (!summary || summaryTimer !== null) { return; }
    summaryTimer = setTimeout(function () {
      summaryTimer = null;
      api("GET", "/agents/summary").then(function (answer) { showSummary(answer.data); }, function () {});
    }, 300);
  }

  // -- state: loaded whole, then kept current by events -----------------------------------------------

  // Events that arrive while the state loads wait for it, then apply in order: the newest wins.
  var waiting = null;
  var loading = null;

  function apply(event) {
    var data = event.data || {};
    if (data.agent) {
      if (event.type === "agent.deleted") { forgetAgent(data.agent.id); } else { showAgent(data.agent, true); }
      showAgentOptions();
    }
    if (data.assignment) { showAssignment(data.assignment); }
    refreshSummarySoon();
  }

  function receive(message) {
    var event = JSON.parse(message.data);
    if (waiting !== null) { waiting.push(event); } else { apply(event); }
  }

  function showAgents(list) {
    var seen = {};
    list.forEach(function (agent) { seen[agent.id] = true; showAgent(agent, false); });
    Object.keys(agentNames).forEach(function (id) { if (!seen[id]) { forgetAgent(id); } });
    showAgentOptions();
  }

  function resync() {
    if (loading !== null) { return loading; }
    waiting = [];
    var loads = [api("GET", "/agents?per_page=100").then(function (page) { showAgents(page.data); })];
    if (assignmentsTable) {
      loads.push(api("GET", "/assignments?per_page=100").then(function (page) {
        page.data.slice().reverse().forEach(showAssignment);
      }));
    }
    if (summary) {
      loads.push(api("GET", "/agents/summary").then(function (answer) { showSummary(answer.data); }));
    }
    function done() {
      var events = waiting;
      waiting = null;
      loading = null;
      events.forEach(apply);
    }
    loading = Promise.all(loads).then(done, function (error) { done(); throw error; });
    return loading;
  }

  // -- the live stream --------------------------------------------------------------------------------

  var source = null;
  var retryMs = 1000;

  function showLive(state, text) {
    live.dataset.state = state;
    live.textContent = text;
  }

  function connect() {
    if (source !== null) { source.close(); }
    showLive("connecting", "connecting…");
    var stream = new EventSource(API + "/events");
    source = stream;
    stream.onopen = function () {
      retryMs = 1000;
      resync().then(function () {
        if (stream === source && stream.readyState === EventSource.OPEN) { showLive("open", "live"); }
      }, function (error) { say(error.message); });
    };
    stream.onerror = function () {
      if (stream !== source) { return; }
      if (stream.readyState === EventSource.CLOSED) {
        // Refused (signed out, too many streams, server down): the browser gives up, so we retry. The
        // reload sends a signed-out browser to the login page.
        showLive("offline", "offline, retrying");
        resync().catch(function () {});
        setTimeout(function () { if (stream === source) { connect(); } }, retryMs);
        retryMs = Math.min(retryMs * 2, MAX_RETRY_MS);
      } else {
        // The browser reconnects by itself and resumes after the last event id: no gap.
        showLive("connecting", "reconnecting…");
      }
    };
    // The stream cannot go on without a gap: reload the state and subscribe afresh (onopen reloads).
    stream.addEventListener("reset", connect);
    EVENT_TYPES.forEach(function (type) { stream.addEventListener(type, receive); });
  }

  // -- the operator's actions -------------------------------------------------------------------------

  if (agentsTable) {
    agentsTable.addEventListener("click", function (event) {
      var button = event.target.closest('button[data-action="toggle-mode"]');
      if (!button) { return; }
      var row = button.closest("tr");
      var mode = row.dataset.mode === "active" ? "paused" : "active";
      act(button, api("PATCH", "/agents/" + row.dataset.agentId, { mode: mode }).then(function (answer) {
        showAgent(answer.data, false);
      }));
    });
  }

  if (assignmentsTable) {
    assignmentsTable.addEventListener("click", function (event) {
      var button = event.target.closest("button[data-action]");
      if (!button) { return; }
      var row = button.closest("tr");
      var path = "/assignments/" + row.dataset.assignmentId;
      var request;
      if (button.dataset.action === "cancel") {
        request = api("POST", path + "/cancel", {});
      } else {
        var agent = field(row, "assign-to").value;
        request = api("POST", path + "/reassign", agent ? { agent_id: agent } : {});
      }
      act(button, request.then(function (answer) { showAssignment(answer.data); }));
    });
  }

  var form = document.getElementById("new-assignment");
  if (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var data = new FormData(form);
      var payload = {
        title: String(data.get("title")),
        priority: Number(data.get("priority") || 0),
        required_capabilities: String(data.get("required_capabilities") || "").split(",")
          .map(function (word) { return word.trim(); })
          .filter(function (word) { return word !== ""; })
      };
      if (data.get("agent_id")) { payload.agent_id = String(data.get("agent_id")); }
      act(form.querySelector('button[type="submit"]'), api("POST", "/assignments", payload).then(function (answer) {
        showAssignment(answer.data);
        refreshSummarySoon();
        form.reset();
      }));
    });
  }

  // -- start ------------------------------------------------------------------------------------------

  document.querySelectorAll('[data-field="name"]').forEach(function (cell) {
    agentNames[cell.closest("tr").dataset.agentId] = cell.textContent;
  });
  document.querySelectorAll("select[data-agent-options] option[value]").forEach(function (option) {
    if (option.value) { agentNames[option.value] = option.textContent; }
  });
  showAllTimes();
  setInterval(showAllTimes, 5000);
  setInterval(function () {
    if (source !== null && source.readyState === EventSource.OPEN && !document.hidden) {
      resync().catch(function () {});
    }
  }, RESYNC_MS);
  connect();
})();
