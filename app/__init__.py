"""The composition root: builds the ASGI app from the server's API and the web's pages.

It sits outside `server/` so that the server never imports `web`; uvicorn serves `app.main:app`.
"""
