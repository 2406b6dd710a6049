-- Who the user is, next to their goals: the display name, plan and active flag the app's login
-- answers (persisted here, editable through the profile endpoint). A row is created at the first
-- login (or start, or goals update) of a user.
ALTER TABLE user_profiles
    ADD COLUMN display_name      text,
    ADD COLUMN subscription_plan text NOT NULL DEFAULT 'free' CHECK (subscription_plan IN ('free', 'premium')),
    ADD COLUMN is_active         boolean NOT NULL DEFAULT true,
    ADD COLUMN created_at        timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN last_login_at     timestamptz;
