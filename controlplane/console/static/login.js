"use strict";
// Log in with an API token: the controller answers with an HttpOnly session cookie.
(function () {
  const form = document.getElementById("login");
  const error = document.getElementById("error");
  const params = new URLSearchParams(location.search);
  if (params.get("expired")) {
    document.getElementById("notice").textContent =
      "Your session ended (logged out, expired or its token was revoked). Log in again.";
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const token = document.getElementById("token").value.trim();
    const r = await fetch("/ui/session", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token: token }),
    });
    if (r.ok) {
      location.replace("/ui/#/overview");
      return;
    }
    let message = "login failed";
    try { message = (await r.json()).error.message; } catch (e) { /* not JSON */ }
    error.textContent = message;
  });
})();
