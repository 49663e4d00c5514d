.PHONY: up down logs test start services

up: ## the full stack with Docker Compose
	docker compose up --build -d

down:
	docker compose down

logs:
	docker compose logs -f app

start: ## the embedded default, no Docker
	npm start

test:
	npm test

services: ## PostgreSQL, Redis and Kafka without Docker; prints export lines
	npm run --silent services
