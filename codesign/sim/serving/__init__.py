"""Serving simulation: request streams (`arrivals`), a continuous-batching scheduler with paged KV
(`scheduler`, `kv`), a fast step-time model (`steptime`), metrics (`metrics`), the SLO search and
server-mode rows (`server`). See docs/serving.md."""
